"""DumpFound: once per new dump, on the daemon's first start after the capture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gi.repository import Gio, GLib

from tests.dbus.conftest import Bus, fake_service

NAME = "org.kdumpd.Kdump1"
PATH = "/org/kdumpd/Kdump1"
PANIC = "Kernel panic - not syncing: sysrq triggered crash"


def _save(crash: Path, name: str, complete: bool) -> Path:
    """A dump folder as capture leaves it."""
    folder = crash / name
    folder.mkdir(parents=True)
    meta = {"time_usec": 1764583810000000, "kernel_version": "6.1.0-50-amd64"}
    meta.update({"panic_message": PANIC} if complete else {"error": "disk full"})
    (folder / "metadata.json").write_text(json.dumps(meta))
    (folder / ("vmcore" if complete else "vmcore.incomplete")).write_bytes(b"\0" * 4096)
    return folder


class Listener:
    """DumpFound signals as this connection receives them. Subscribed before any daemon
    starts: the daemon sends them as soon as it owns its name."""

    def __init__(self, bus: Bus) -> None:
        flags = (
            Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
            | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
        )
        self._con = Gio.DBusConnection.new_for_address_sync(bus.address, flags, None, None)
        self.found: list[dict[str, Any]] = []
        # No sender: the name has no owner yet, and every daemon started is a new owner.
        self._con.signal_subscribe(
            None, NAME, "DumpFound", PATH, None, Gio.DBusSignalFlags.NONE, self._fired
        )
        self._call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetId")

    def _fired(self, *args: Any) -> None:
        self.found.append(args[5].unpack()[0])

    def _call(self, name: str, path: str, iface: str, method: str) -> None:
        # A method call on this connection is answered after the bus has seen every message
        # sent on it before (the AddMatch), and its reply comes after every message that
        # the callee sent before it (the signals).
        self._con.call_sync(name, path, iface, method, None, None, 0, 60_000, None)

    def since_start(self) -> list[dict[str, Any]]:
        """Every signal the running daemon sent before it answered its first call:
        DumpFound goes out before the daemon answers anything."""
        self._call(NAME, PATH, NAME, "GetStatus")
        context = GLib.MainContext.default()
        while context.iteration(False):  # the signals received are dispatched here
            pass
        found, self.found = self.found, []
        return found


def test_dump_found_once_per_new_dump(bus: Bus) -> None:
    crash = bus.workdir / "crash"
    saved = _save(crash, "2026-12-01-101010-6.1.0-50-amd64", complete=True)
    failed = _save(crash, "2026-12-01-111111-6.1.0-50-amd64", complete=False)
    listener = Listener(bus)
    with fake_service(bus):
        found = listener.since_start()
    by_path = {d["Path"]: d for d in found}
    assert len(found) == 2 and set(by_path) == {str(saved), str(failed)}, found
    assert by_path[str(saved)]["Complete"] is True
    assert by_path[str(saved)]["PanicMessage"] == PANIC
    assert by_path[str(failed)]["Complete"] is False
    assert by_path[str(failed)]["Error"] == "disk full"
    # the fields of a ListDumps entry, with their types
    assert set(by_path[str(saved)]) == {
        "Path", "TimeUsec", "KernelVersion", "SizeBytes", "Complete", "PanicMessage", "Error",
        "Location",
    }  # fmt: skip
    assert by_path[str(saved)]["SizeBytes"] == 4096

    with fake_service(bus):  # announced already
        assert listener.since_start() == []

    newer = _save(crash, "2026-12-02-090000-6.1.0-50-amd64", complete=True)
    with fake_service(bus):
        found = listener.since_start()
    assert [d["Path"] for d in found] == [str(newer)], found
