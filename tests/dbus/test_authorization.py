"""Reload and Unload from users that are not root: polkit decides, and waiting for it
holds up no one (issue 11). python-dbusmock's polkitd plays polkit on the test bus; its
SimulateHang keeps every check unanswered, as an authentication agent left waiting does."""

from __future__ import annotations

import sys
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


def test_one_user_cannot_pile_up_polkit_checks(service: Service, polkit: Any) -> None:
    """Each waiting check is a call and a polkit request the daemon holds: one user gets
    AUTH_WAITING_PER_USER at a time, then a refusal at once; root and others go on."""
    from kdumpd.dbus_service import AUTH_WAITING_PER_USER

    polkit.SetAllowed(["org.kdumpd.Kdump1.reload"])
    polkit.SimulateHang(True)
    address = f"--address={service.bus.address}"
    waiting = [
        service.bus.start("busctl", address, *RELOAD, user=NOBODY)
        for _ in range(AUTH_WAITING_PER_USER)
    ]
    # The mock says whether checks hang, not how many: teach it to count.
    polkit.AddMethod("", "HangingCalls", "", "u", "ret = len(self.hanging_calls)")
    authority = ("org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority")

    def hanging() -> int:
        out = service.bus.busctl("call", *authority, f"{authority[0]}.Authority", "HangingCalls")
        return int(out.stdout.split()[1]) if out.returncode == 0 else -1

    wait_until(lambda: hanging() == AUTH_WAITING_PER_USER, 30, "the daemon's polkit checks")
    # busctl does not print an AccessDenied's message; kdumpd does.
    r = service.bus.run("timeout", "30", sys.executable, "-m", "kdumpd.cli", "reload", user=NOBODY)
    assert r.returncode == 1 and "are waiting for polkit already" in r.stderr, r.stderr
    assert hanging() == AUTH_WAITING_PER_USER
    assert all(w.poll() is None for w in waiting)
    assert service.bus.kdumpd("reload").returncode == 0  # root: no polkit
    polkit.ReleaseHangingCalls()
    for w in waiting:
        _, err = w.communicate(timeout=60)
        assert w.returncode == 0, err
    polkit.SimulateHang(False)
    r = service.bus.busctl(*RELOAD, user=NOBODY)
    assert r.returncode == 0, r.stderr


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
