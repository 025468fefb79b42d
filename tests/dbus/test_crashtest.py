"""Test() on the real dbus-daemon: who may crash the machine, when it is refused, what it
records, and the verdict a later start reads (kdumpd/crashtest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gi.repository import Gio, GLib
from pydbus import connect

from kdumpd import crashtest
from tests.dbus.conftest import NOBODY, Bus, Service, fake_service, wait_until

NAME = "org.kdumpd.Kdump1"
PATH = "/org/kdumpd/Kdump1"
OTHER_BOOT = "00000000-1111-2222-3333-444444444444"


def _crash_request(service: Service) -> Path:
    return service.sysroot / "run/kdumpd/crash"


def _prop(service: Service, name: str) -> str:
    return service.bus.busctl("get-property", NAME, PATH, NAME, name).stdout.strip()


def test_others_may_not_crash_the_machine(service: Service, polkit: Any) -> None:
    # Reload's authorization is not Test's: one polkit action per method.
    polkit.SetAllowed(["org.kdumpd.Kdump1.reload", "org.kdumpd.Kdump1.unload"])
    r = service.bus.busctl("call", NAME, PATH, NAME, "Test", user=NOBODY)
    assert r.returncode != 0 and "Access denied" in r.stderr, r.stderr
    assert not _crash_request(service).exists()
    assert crashtest.load(service.sysroot) is None
    assert _prop(service, "LastTestResult") == 's ""'
    polkit.SetAllowed(["org.kdumpd.Kdump1.test"])
    r = service.bus.busctl("call", NAME, PATH, NAME, "Test", user=NOBODY)
    assert r.returncode == 0, r.stderr
    wait_until(_crash_request(service).exists, 30, "the crash request")


def test_root_crashes_it_after_recording_the_test(service: Service) -> None:
    r = service.bus.kdumpd("test", "--yes")
    assert r.returncode == 0, r.stderr
    assert "crash requested" in r.stdout
    wait_until(_crash_request(service).exists, 30, "the crash request")
    test = crashtest.load(service.sysroot)
    assert test is not None and test.result == "pending"
    assert _crash_request(service).read_text() == f"{test.id}\n"
    assert _prop(service, "LastTestResult") == 's "pending"'
    assert _prop(service, "LastTestUsec") == f"t {test.time_usec}"
    status = service.bus.kdumpd("status").stdout
    assert "Last test:" in status and "pending" in status


def test_no_test_without_a_crash_kernel_or_a_confirmation(service: Service) -> None:
    r = service.bus.kdumpd("test")  # no terminal to ask on
    assert r.returncode == 1 and "pass --yes" in r.stderr, r.stderr
    assert service.bus.kdumpd("unload").returncode == 0
    with pytest.raises(GLib.Error) as e:
        connect(service.bus.address).get(NAME, PATH).Test()
    assert Gio.DBusError.get_remote_error(e.value) == "org.kdumpd.Kdump1.Error.NotLoaded"
    assert "the crash kernel is not loaded" in e.value.message
    r = service.bus.kdumpd("test", "--yes")
    assert r.returncode == 1 and "not loaded" in r.stderr and "Traceback" not in r.stderr
    assert not _crash_request(service).exists()
    assert crashtest.load(service.sysroot) is None


def _pending_from_another_boot(root: Path, capture: dict[str, object]) -> str:
    test = crashtest.pending(root, OTHER_BOOT, 1_764_583_810_000_000)
    capture = {**capture, "test_id": test.id}
    (root / crashtest.STATE_DIR / crashtest.CAPTURE_RECORD).write_text(json.dumps(capture))
    return test.id


def test_the_first_start_after_the_crash_gives_the_verdict(bus: Bus, tmp_path: Path) -> None:
    """As the fake daemon's sysroot will be: a test pending from another boot, and the
    crash kernel's record of a dump that is there (passed), then of one that is not."""
    with fake_service(bus) as svc:
        root = svc.sysroot
        folder = bus.workdir / "crash" / "2026-12-01-172123-6.1.0-50-amd64"
        folder.mkdir(parents=True)
        (folder / "metadata.json").write_text('{"kernel_version": "6.1.0-50-amd64"}')
        (folder / "vmcore").write_bytes(b"\0" * 4096)
        test_id = _pending_from_another_boot(root, {"ok": True, "error": "", "dump": folder.name})
    with fake_service(bus) as svc:
        assert _prop(svc, "LastTestResult") == 's "passed"'
        assert _prop(svc, "LastTestUsec") == "t 1764583810000000"
        verdict = crashtest.load(svc.sysroot)
        assert verdict is not None and (verdict.id, verdict.dump) == (test_id, str(folder))
        _pending_from_another_boot(
            root, {"ok": False, "error": "the dump file system is full (/var/crash)", "dump": ""}
        )
    with fake_service(bus) as svc:
        assert _prop(svc, "LastTestResult") == 's "failed"'
        verdict = crashtest.load(svc.sysroot)
        assert verdict is not None and verdict.reason == "the dump file system is full (/var/crash)"


def test_a_crash_that_never_came_fails_the_test_and_is_not_asked_for_again(bus: Bus) -> None:
    """A daemon restarted in the boot of a test whose crash did not come (the path unit was
    not running): the request must not crash the machine later, and the test failed."""
    with fake_service(bus) as svc:
        assert svc.bus.kdumpd("test", "--yes").returncode == 0
        wait_until(_crash_request(svc).exists, 30, "the crash request")
    with fake_service(bus) as svc:
        assert not _crash_request(svc).exists()
        assert _prop(svc, "LastTestResult") == 's "failed"'
        verdict = crashtest.load(svc.sysroot)
        assert verdict is not None and "kdumpd-crash.path" in verdict.reason
