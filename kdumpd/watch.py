"""Why the daemon reloads by itself: files changing, CPUs and memory coming and going.

Everything that asks for a reload (D-Bus Reload, SIGHUP, a watched file, a hotplug
uevent) goes through one Coalescer: a burst of events becomes one reload, a quiet while
after the last of them. A package install writes the kernel, then the initrd, then runs
our hooks; all of that ends in a single reload, after the last write. Whether that reload
must load even if no file changed is the daemon's count of requests
(service.Daemon.mark_loading), not the coalescer's business.

Nothing polls: file events come from inotify (Gio.FileMonitor) and hotplug events from the
kernel's uevent netlink socket, both on the GLib main loop.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gi.repository import Gio, GLib

from kdumpd import journal

QUIET_S = 2.0  # after a file event or a hotplug event: more may follow
# After a request from a hook or a person: hooks run once their package's files are in
# place, and a person wants an answer; the wait only gathers requests sent together (the
# two hooks of one kernel install).
SETTLED_QUIET_S = 0.5
MAX_WAIT_S = 20.0  # a steady stream of events must not postpone the reload for ever

NETLINK_KOBJECT_UEVENT = 15
_KERNEL_GROUP = 1
_ACTIONS = ("add", "remove", "online", "offline")


@dataclass
class Coalescer:
    """Pure timing logic, driven by the caller's clock."""

    quiet: float = QUIET_S
    settled_quiet: float = SETTLED_QUIET_S
    max_wait: float = MAX_WAIT_S
    first: float | None = None
    deadline: float | None = None

    def event(self, now: float, settled: bool = False) -> float:
        """Note an event; returns when the reload is due. The last one sets the wait:
        short when it says the change is complete (settled), as a hook's request does."""
        if self.first is None:
            self.first = now
        quiet = self.settled_quiet if settled else self.quiet
        self.deadline = min(now + quiet, self.first + self.max_wait)
        return self.deadline

    def due(self, now: float) -> bool:
        """Whether the reload is due; if so, start afresh. False with nothing pending."""
        if self.deadline is None or now < self.deadline:
            return False
        self.first = self.deadline = None
        return True


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


def _now() -> float:
    return float(GLib.get_monotonic_time()) / 1e6


class Watcher:
    """Glue between the event sources, the Coalescer and the daemon: `reload` runs the
    coalesced reload, `ask` is how hotplug asks for one that must load. Both are told why,
    in words for the journal."""

    def __init__(
        self,
        reload: Callable[[str], None],
        ask: Callable[[str], None],
        sysroot: Path = Path("/"),
    ) -> None:
        self._reload = reload
        self._ask = ask
        self._sysroot = sysroot
        self._coalescer = Coalescer()
        self._why: list[str] = []
        self._timer = 0
        self._monitors: list[Gio.FileMonitor] = []
        self._uevents: socket.socket | None = None

    def request(self, why: str, settled: bool) -> None:
        """A watched file changed, or a reload was asked for (D-Bus, SIGHUP, hotplug:
        the daemon has counted those). Settled when the asker knows the change is
        complete."""
        if why not in self._why:
            self._why.append(why)
        self._coalescer.event(_now(), settled)
        self._arm()

    def _arm(self) -> None:
        if self._timer:
            GLib.source_remove(self._timer)
        assert self._coalescer.deadline is not None
        delay_ms = math.ceil(max(0.0, self._coalescer.deadline - _now()) * 1000)
        self._timer = GLib.timeout_add(delay_ms, self._fire)

    def _fire(self) -> bool:
        self._timer = 0
        if self._coalescer.due(_now()):
            why, self._why = ", ".join(self._why), []
            self._reload(why)
        elif self._coalescer.deadline is not None:
            self._arm()  # GLib woke us a little early
        return False

    def watch_files(self, directories: dict[Path, Callable[[str], bool]]) -> None:
        """Watch these directories; the filter says which file names matter."""
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
        matters: Callable[[str], bool],
    ) -> None:
        if event == Gio.FileMonitorEvent.ATTRIBUTE_CHANGED:
            return  # touch or chmod: the content is the same
        names = [f.get_basename() for f in (file, other) if f is not None]
        if any(matters(n) for n in names):
            done = event == Gio.FileMonitorEvent.CHANGES_DONE_HINT  # the end of "changed"
            what = f"{file.get_path()} {'changed' if done else event.value_nick}"
            if event == Gio.FileMonitorEvent.RENAMED and other is not None:
                what += f" to {other.get_path()}"
            self.request(what, settled=False)

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
            self._ask(what)
        else:
            journal.send(
                journal.INFO,
                f"{what}: the kernel updates the loaded crash kernel itself "
                "(crash_hotplug is 1), no reload",
            )
        return True
