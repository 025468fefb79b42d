"""Why the daemon reloads by itself: files changing, CPUs and memory coming and going.

Each event becomes a request in the daemon's one queue (kdumpd/requests.py), which
coalesces a burst of them into one reload a quiet while after the last. Nothing polls:
file events come from inotify (Gio.FileMonitor) and hotplug events from the kernel's
uevent netlink socket, both on the GLib main loop.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gi.repository import Gio, GLib

from kdumpd import journal

NETLINK_KOBJECT_UEVENT = 15
_KERNEL_GROUP = 1
_ACTIONS = ("add", "remove", "online", "offline")


def parse_uevent(data: bytes) -> dict[str, str]:
    """A kernel uevent datagram: 'ACTION@DEVPATH' then KEY=VALUE fields, NUL-separated."""
    fields = data.split(b"\0")
    event = {}
    for field in fields[1:]:
        key, sep, value = field.partition(b"=")
        if sep:
            event[key.decode(errors="replace")] = value.decode(errors="replace")
    return event


def is_hotplug(event: dict[str, str]) -> bool:
    """CPU or memory came or went."""
    return event.get("SUBSYSTEM") in ("cpu", "memory") and event.get("ACTION") in _ACTIONS


def hotplug_needs_reload(event: dict[str, str], sysroot: Path) -> bool:
    """A hotplug event, and the kernel does not fix the crash image itself (crash_hotplug
    absent, as before 6.6, or 0)."""
    if not is_hotplug(event):
        return False
    flag = sysroot / f"sys/devices/system/{event['SUBSYSTEM']}/crash_hotplug"
    try:
        return flag.read_text().strip() != "1"
    except OSError:
        return True


class Watcher:
    """The event sources: `changed` hears of a watched file that changed (with the kind of
    request its directory's filter says it asks for), `hotplug` of a CPU or memory change
    the kernel does not handle itself; both are told what happened, in words for the
    journal."""

    def __init__(
        self,
        changed: Callable[[str, str], None],
        hotplug: Callable[[str], None],
        sysroot: Path = Path("/"),
    ) -> None:
        self._changed = changed
        self._hotplug = hotplug
        self._sysroot = sysroot
        self._monitors: list[Gio.FileMonitor] = []
        self._uevents: socket.socket | None = None

    def watch_files(self, directories: dict[Path, Callable[[str], str | None]]) -> None:
        """Watch these directories; the filter says which request a file name's change
        asks for (None: none)."""
        for monitor in self._monitors:
            monitor.cancel()
        self._monitors = []
        for directory, matters in directories.items():
            try:
                monitor = Gio.File.new_for_path(str(directory)).monitor_directory(
                    Gio.FileMonitorFlags.WATCH_MOVES, None
                )
            except GLib.Error:
                continue  # a directory that does not exist yet cannot hold our files
            monitor.connect("changed", self._on_file_event, matters)
            self._monitors.append(monitor)

    def _on_file_event(
        self,
        _monitor: Any,
        file: Gio.File,
        other: Gio.File | None,
        event: Gio.FileMonitorEvent,
        matters: Callable[[str], str | None],
    ) -> None:
        if event == Gio.FileMonitorEvent.ATTRIBUTE_CHANGED:
            return  # touch or chmod: the content is the same
        names = [f.get_basename() for f in (file, other) if f is not None]
        kinds = [kind for kind in map(matters, names) if kind]
        if kinds:
            done = event == Gio.FileMonitorEvent.CHANGES_DONE_HINT  # the end of "changed"
            what = f"{file.get_path()} {'changed' if done else event.value_nick}"
            if event == Gio.FileMonitorEvent.RENAMED and other is not None:
                what += f" to {other.get_path()}"
            self._changed(kinds[0], what)

    def watch_hotplug(self) -> None:
        """Listen to the kernel's uevents for CPU and memory hotplug."""
        try:
            sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT
            )
            sock.bind((0, _KERNEL_GROUP))
        except OSError:
            return  # no netlink here (a container): hotplug reloads are not possible
        self._uevents = sock
        GLib.io_add_watch(sock.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN, self._on_uevent)

    def _on_uevent(self, _fd: int, _condition: int) -> bool:
        assert self._uevents is not None
        try:
            data = self._uevents.recv(65536)
        except OSError:
            return True
        event = parse_uevent(data)
        if not is_hotplug(event):
            return True
        what = f"{event.get('DEVPATH', event['SUBSYSTEM'])} {event['ACTION']}"
        if hotplug_needs_reload(event, self._sysroot):
            self._hotplug(what)
        else:
            journal.send(
                journal.INFO,
                f"{what}: the kernel updates the loaded crash kernel itself "
                "(crash_hotplug is 1), no reload",
            )
        return True
