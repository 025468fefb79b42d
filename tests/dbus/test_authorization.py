"""Reload and Unload from users that are not root: polkit decides, and waiting for it
holds up no one (issue 11). python-dbusmock's polkitd plays polkit on the test bus; its
SimulateHang keeps every check unanswered, as an authentication agent left waiting does."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bench.dbus_memory import KINDS, connect
from tests.dbus.conftest import NOBODY, Service, wait_until

NAME = "org.kdumpd.Kdump1"
PATH = "/org/kdumpd/Kdump1"
RELOAD = ("call", "--timeout=120", NAME, PATH, NAME, "Reload")


def test_a_pending_polkit_check_holds_up_no_one(service: Service, polkit: Any) -> None:
    polkit.SetAllowed(["org.kdumpd.Kdump1.reload"])
    polkit.SimulateHang(True)
    waiting = service.bus.start("busctl", f"--address={service.bus.address}", *RELOAD, user=NOBODY)
    wait_until(polkit.HaveHangingCalls, 30, "the daemon's polkit check")

    connection = connect(service.bus.address)
    calls = [KINDS[k] for k in ("Get State", "GetAll", "GetStatus", "ListDumps")]
    latencies = []
    for i in range(400):
        start = time.monotonic()
        if i % 50 == 0:  # root needs no polkit
            connection.call_sync(NAME, PATH, NAME, "Reload", None, None, 0, 10_000)
        else:
            calls[i % len(calls)](connection)
        latencies.append(time.monotonic() - start)
    p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1]
    assert p99 < 0.1, f"p99 {p99 * 1000:.0f} ms while a polkit check waits"

    assert waiting.poll() is None  # its answer waits for polkit's
    polkit.ReleaseHangingCalls()
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err


@pytest.mark.parametrize("service", [{"polkit_timeout_s": 2}], indirect=True)
def test_a_polkit_check_that_never_answers_is_refused_after_the_timeout(
    service: Service, polkit: Any
) -> None:
    polkit.SimulateHang(True)
    r = service.bus.kdumpd("reload", user=NOBODY)  # busctl shows AccessDenied as EACCES
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "kdumpd reload: permission denied: org.kdumpd.Kdump1.reload: polkit did not answer "
        "within 2 s; only root or a user that polkit authorizes may do this"
    )
    # The daemon is not left waiting: it answers, and a later check polkit answers works.
    polkit.SimulateHang(False)
    polkit.SetAllowed(["org.kdumpd.Kdump1.reload"])
    r = service.bus.busctl(*RELOAD, user=NOBODY)
    assert r.returncode == 0, r.stderr
    r = service.bus.kdumpd("unload", user=NOBODY)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "kdumpd unload: permission denied: org.kdumpd.Kdump1.unload: polkit refused; "
        "only root or a user that polkit authorizes may do this"
    )
