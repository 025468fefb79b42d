"""The D-Bus face of the daemon (pydbus kept to this module so the binding can be swapped).

Method calls run on the GLib main loop. Loading a kernel is slow, so Reload and Unload
hand the work to one worker thread and return at once; State turns to "loading" before
they return, and PropertiesChanged tells when the work is done (`kdumpd reload` waits
for it). Reload requests pass through the watcher's coalescer first (kdumpd/watch.py).
The worker posts status changes back to the main loop with GLib.idle_add.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gi.repository import GLib
from pydbus import SystemBus
from pydbus.generic import signal as dbus_signal

from kdumpd import UserError, dumps, journal
from kdumpd.service import Daemon, Status
from kdumpd.watch import Watcher

BUS_NAME = "org.kdumpd.Kdump1"
OBJECT_PATH = "/org/kdumpd/Kdump1"
INTERFACE = "org.kdumpd.Kdump1"

PROPERTY_TYPES = {
    "State": "s",
    "CrashKernelLoaded": "b",
    "ReservedBytes": "t",
    "RecommendedBytes": "t",
    "KernelVersion": "s",
    "KernelImage": "s",
    "Initrd": "s",
    "CommandLine": "s",
    "LastLoadUsec": "t",
    "LastError": "s",
    "ConfigPath": "s",
    "CaptureMode": "s",
}

_PROPERTIES_XML = "\n".join(
    f'    <property name="{name}" type="{sig}" access="read"/>'
    for name, sig in PROPERTY_TYPES.items()
)

INTROSPECTION = f"""
<node>
  <interface name="{INTERFACE}">
{_PROPERTIES_XML}
    <method name="GetStatus"><arg name="status" type="a{{sv}}" direction="out"/></method>
    <method name="ListDumps"><arg name="dumps" type="aa{{sv}}" direction="out"/></method>
    <method name="Reload"/>
    <method name="Unload"/>
  </interface>
</node>
"""

ACTION_RELOAD = "org.kdumpd.Kdump1.reload"
ACTION_UNLOAD = "org.kdumpd.Kdump1.unload"


def _error(name: str) -> type[Exception]:
    """An exception class that pydbus turns into the D-Bus error `name`."""
    return type(name, (Exception,), {})


AccessDenied = _error("org.freedesktop.DBus.Error.AccessDenied")
InternalError = _error("org.kdumpd.Kdump1.Error.Internal")


def _variants(values: dict[str, Any], types: dict[str, str]) -> dict[str, GLib.Variant]:
    return {k: GLib.Variant(types[k], v) for k, v in values.items()}


class Worker:
    """One thread that runs reloads and unloads in order; repeated reload requests that
    arrive while one is waiting collapse into it."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="kdumpd-worker", daemon=True).start()

    def submit(self, name: str, job: Callable[[], None]) -> None:
        with self._lock:
            if name in self._pending:
                return
            self._pending.add(name)

        def run() -> None:
            with self._lock:
                self._pending.discard(name)
            job()

        self._jobs.put(run)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception as e:  # a bug must not kill the worker and freeze the daemon
                journal.send(journal.ERR, f"internal error: {e!r}")


class KdumpObject:
    PropertiesChanged = dbus_signal()

    def __init__(self, daemon: Daemon, worker: Worker, bus: Any) -> None:
        self._daemon = daemon
        self._worker = worker
        self._bus = bus
        self._ready = False
        self.watcher = Watcher(
            self.reload_now, lambda why: self.request_reload(why, hardware=True), daemon.sysroot
        )

    def __getattr__(self, name: str) -> Any:
        # Properties: CrashKernelLoaded is read from the kernel on every request.
        if name in PROPERTY_TYPES:
            return getattr(self._daemon.refresh(), name)
        raise AttributeError(name)

    def GetStatus(self) -> dict[str, GLib.Variant]:
        return _variants(self._daemon.refresh().as_dict(), PROPERTY_TYPES)

    def ListDumps(self) -> list[dict[str, GLib.Variant]]:
        cfg = self._daemon.config
        found = dumps.scan(cfg.dump_path if cfg else dumps.DEFAULT_PATH)
        return [_variants(d.as_dict(), dumps.FIELD_TYPES) for d in found]

    def Reload(self, dbus_context: Any) -> None:
        self._authorize(dbus_context, ACTION_RELOAD)
        self.request_reload(f"Reload from {self._caller(dbus_context.sender)}")

    def Unload(self, dbus_context: Any) -> None:
        self._authorize(dbus_context, ACTION_UNLOAD)
        self._daemon.mark_unloading()
        self._worker.submit("unload", self._unload)

    def request_reload(self, why: str, hardware: bool = False) -> None:
        """A reload asked for (D-Bus, SIGHUP, hotplug), coalesced with file events by the
        watcher. systemd hears RELOADING=1 now and READY=1 when done."""
        if self._ready:
            journal.notify_reloading()
        self._daemon.mark_loading(hardware)
        self.watcher.request(why, settled=not hardware)  # a hotplug burst may go on

    def reload_now(self, why: str) -> None:
        """The watcher's coalesced reload. Requests that come while one is queued join it;
        the daemon counts them, so none is lost."""

        def job() -> None:
            try:
                self._daemon.reload(force=False, why=why)
            finally:
                GLib.idle_add(self._reloaded)

        self._worker.submit("reload", job)

    def adopt_load(self, load: threading.Thread) -> None:
        """The first load, started before the bus was set up: ready once it has finished."""

        def job() -> None:
            load.join()
            GLib.idle_add(self._reloaded)

        self._worker.submit("first-load", job)

    def _reloaded(self) -> bool:
        self._ready = True
        self.watcher.watch_files(self._daemon.watch_targets())
        journal.notify(READY="1", STATUS=_status_words(self._daemon.status))
        if self._daemon.unbuilt is not None:  # the machine is protected: now build it

            def build() -> None:
                try:
                    self._daemon.build_environment()
                finally:
                    GLib.idle_add(self._reloaded)

            self._worker.submit("environment", build)
        return False  # GLib: run once

    def _unload(self) -> None:
        with contextlib.suppress(OSError):  # LastError already says why
            self._daemon.unload()

    def _caller(self, sender: str) -> str:
        """Who sent a request, for the journal: busctl[1234] rather than :1.56."""
        try:
            pid = self._bus.dbus.GetConnectionUnixProcessID(sender)
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (GLib.Error, OSError):
            return sender
        return f"{comm}[{pid}]"

    def _authorize(self, context: Any, action: str) -> None:
        sender = context.sender
        try:
            if self._bus.dbus.GetConnectionUnixUser(sender) == 0:
                return
            if context.is_authorized(action, {}, interactive=True):
                return
        except GLib.Error as e:  # no polkit on this bus: only root is allowed
            journal.send(journal.INFO, f"polkit check for {sender} failed: {e.message}")
        raise AccessDenied(f"{action}: only root or a user that polkit authorizes may do this")

    def emit(self, changed: dict[str, Any]) -> None:
        self.PropertiesChanged(INTERFACE, changed, [])


def _status_words(status: Status) -> str:
    if status.State == "loaded":
        text = f"crash kernel {status.KernelVersion} loaded"
    else:
        text = f"{status.State}"
    return f"{text}: {status.LastError}" if status.LastError else text


def serve(daemon: Daemon, first_load: threading.Thread, bus: Any | None = None) -> int:
    """Run the daemon until SIGTERM; READY=1 once `first_load` (service.start_first_load)
    has finished. Returns the exit status."""
    # pydbus logs a traceback for every error reply, AccessDenied included; our errors are
    # deliberate and unexpected ones are reported by the worker.
    logging.getLogger("pydbus").setLevel(logging.CRITICAL)
    bus = bus or SystemBus()
    loop = GLib.MainLoop()
    worker = Worker()
    obj = KdumpObject(daemon, worker, bus)

    def on_change(changed: dict[str, Any]) -> None:
        # The values as they are when the signal goes out: changes made on two threads
        # may queue their emits out of order, and the last one sent must be the truth.
        def emit() -> bool:
            status = daemon.status
            obj.emit({name: getattr(status, name) for name in changed})
            journal.notify(STATUS=_status_words(status))
            return False

        GLib.idle_add(emit)

    daemon.on_change = on_change
    registration = bus.register_object(OBJECT_PATH, obj, INTROSPECTION)
    try:
        owner = bus.request_name(BUS_NAME, allow_replacement=False, replace=False)
    except RuntimeError as e:
        journal.send(journal.ERR, f"cannot own {BUS_NAME} on the system bus: {e}")
        registration.unregister()
        return 1

    obj.adopt_load(first_load)
    obj.watcher.watch_hotplug()

    def on_hup() -> bool:
        obj.request_reload("SIGHUP")
        return True

    def on_term() -> bool:
        loop.quit()
        return True

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGHUP, on_hup)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, on_term)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, on_term)
    interval = journal.watchdog_interval_usec()
    if interval:

        def watchdog() -> bool:
            journal.notify(WATCHDOG="1")
            return True

        GLib.timeout_add(interval // 1000, watchdog)
    loop.run()
    # The crash kernel stays loaded: stopping or restarting the daemon must not leave a gap.
    journal.notify(STOPPING="1")
    owner.unown()
    registration.unregister()
    return 0


class Client:
    """What the CLI and the kernel hooks use to talk to the daemon."""

    def __init__(self, bus: Any | None = None) -> None:
        try:
            self._bus = bus or SystemBus()
            self._proxy = self._bus.get(BUS_NAME, OBJECT_PATH)
        except GLib.Error as e:
            raise UserError(_client_error(e)) from None

    def status(self) -> dict[str, Any]:
        try:
            return dict(self._proxy.GetStatus())
        except GLib.Error as e:
            raise UserError(_client_error(e)) from None

    def list_dumps(self) -> list[dict[str, Any]]:
        try:
            return [dict(d) for d in self._proxy.ListDumps()]
        except GLib.Error as e:
            raise UserError(_client_error(e)) from None

    def call_and_wait(self, action: Callable[[Any], None], timeout_s: int = 300) -> dict[str, Any]:
        """Call Reload or Unload, then wait until the daemon has finished the work: State
        stays "loading" until then (service.Daemon.mark_loading)."""
        loop = GLib.MainLoop()

        def changed(_iface: str, props: dict[str, Any], _invalid: list[str]) -> None:
            if props.get("State", "loading") != "loading":
                loop.quit()

        timed_out = False

        def expired() -> bool:
            nonlocal timed_out
            timed_out = True
            loop.quit()
            return False

        # Subscribe before calling, so the end of a quick reload cannot be missed.
        subscription = self._bus.subscribe(
            sender=BUS_NAME,
            iface="org.freedesktop.DBus.Properties",
            signal="PropertiesChanged",
            object=OBJECT_PATH,
            signal_fired=lambda *a: changed(*a[4]),
        )
        timer = 0
        try:
            action(self._proxy)
            timer = GLib.timeout_add_seconds(timeout_s, expired)
            # Any signal saying "not loading" wakes us, an old one too: ask again.
            while (status := self.status())["State"] == "loading" and not timed_out:
                loop.run()
        except GLib.Error as e:
            raise UserError(_client_error(e)) from None
        finally:
            subscription.unsubscribe()
            if timer and not timed_out:
                GLib.source_remove(timer)
        if status["State"] == "loading":
            raise UserError(f"the daemon did not finish within {timeout_s} s")
        return status


def _client_error(e: GLib.Error) -> str:
    text = str(e.message)
    if "ServiceUnknown" in text or "NameHasNoOwner" in text:
        return f"the kdumpd daemon is not running ({BUS_NAME} has no owner on the system bus)"
    if "AccessDenied" in text:
        return "permission denied: " + text.rsplit(": ", 1)[-1]
    if "FileNotFound" in text or "NoServer" in text or "Could not connect" in text:
        return f"cannot reach the system bus: {text}"
    return text
