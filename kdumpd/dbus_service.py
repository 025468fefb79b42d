"""The D-Bus face of the daemon (pydbus kept to this module so the binding can be swapped).

Method calls run on the GLib main loop. Loading a kernel is slow, so Reload and Unload
hand the work to one worker thread and return at once; State turns to "loading" before
they return, and PropertiesChanged tells when the work is done (`kdumpd reload` waits
for it). Reload requests pass through the watcher's coalescer first (kdumpd/watch.py).
The worker posts status changes back to the main loop with GLib.idle_add.

The object is registered with Gio directly, not with pydbus's register_object: a method
handler must be able to answer later (the polkit check of Reload and Unload is an
asynchronous call, answered when polkit answers, so no caller can stall the loop), every
invocation must be given back to GLib once answered (see Call), and every failure must
leave as a typed error. pydbus still gives the bus, the name and the client's proxies.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gi.repository import Gio, GLib
from pydbus import SystemBus

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

_INTERFACE_INFO = Gio.DBusNodeInfo.new_for_xml(INTROSPECTION).interfaces[0]
PROPERTIES = "org.freedesktop.DBus.Properties"

ACTION_RELOAD = "org.kdumpd.Kdump1.reload"
ACTION_UNLOAD = "org.kdumpd.Kdump1.unload"

# The errors a method call can end with (README, "D-Bus"). Reload and Unload return at
# once, so what goes wrong in the work itself (a broken config, a refused kernel) is not a
# method error: State and LastError say it.
ERROR_ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"  # the SPEC's name
ERROR_FAILED = f"{INTERFACE}.Error.Failed"  # the daemon could not do it: a bug, say

# An interactive check waits for a person to type a password in an authentication agent;
# after this long the caller is refused, so a forgotten agent holds nothing for ever.
AUTH_TIMEOUT_S = 60.0


class Call:
    """One method call on our object, answered exactly once.

    With GLib before 2.84, g_dbus_connection_register_object_with_closures (what PyGObject
    calls register_object) passes the closure the reference to the invocation that the
    handler owns, and PyGObject takes it as borrowed; answering consumes only the
    reference PyGObject adds for the call. So the invocation, with its message, arguments
    and reply, was never freed: about 1.6 KB per call (pydbus issue 83). Once answered,
    that one reference is given back here."""

    def __init__(self, invocation: Gio.DBusMethodInvocation) -> None:
        self._invocation = invocation
        self.sender: str = invocation.get_sender()
        self.method: str = invocation.get_method_name()

    def answer(self, produce: Callable[[], GLib.Variant | None]) -> None:
        """Reply with what `produce` returns; if it raises, with Error.Failed."""
        try:
            value = produce()
        except Exception as e:  # a bug: the caller gets a typed error, the journal the details
            journal.send(journal.ERR, f"internal error in {self.method} for {self.sender}: {e!r}")
            self.fail(
                ERROR_FAILED, f"{self.method} failed (internal error): {e or type(e).__name__}"
            )
        else:
            self._invocation.return_value(value)
            self._invocation._unref()

    def fail(self, name: str, message: str) -> None:
        self._invocation.return_dbus_error(name, message)
        self._invocation._unref()


class Authorizer:
    """Who may call the privileged methods: root, and users that polkit authorizes.

    Asks the bus who the caller is, then polkit, as asynchronous calls: the main loop
    serves everyone else meanwhile, and the method's reply goes out when polkit answers."""

    def __init__(self, connection: Gio.DBusConnection, timeout_s: float) -> None:
        self._connection = connection
        self._timeout_s = timeout_s

    def check(self, call: Call, action: str, granted: Callable[[str], None]) -> None:
        """Call `granted` with who the caller is (busctl[1234]) once it may do `action`;
        otherwise answer the call with an error."""

        def credentials(connection: Gio.DBusConnection, result: Gio.AsyncResult) -> None:
            try:
                creds = connection.call_finish(result).unpack()[0]
            except GLib.Error as e:  # the caller has gone
                call.fail(ERROR_ACCESS_DENIED, f"{action}: cannot tell who asks: {e.message}")
                return
            who = _who(call.sender, creds.get("ProcessID"))
            if creds["UnixUserID"] == 0:
                granted(who)
            else:
                self._ask_polkit(call, action, lambda: granted(who))

        self._connection.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetConnectionCredentials",
            GLib.Variant("(s)", (call.sender,)),
            GLib.VariantType("(a{sv})"),
            Gio.DBusCallFlags.NONE,
            int(self._timeout_s * 1000),
            None,
            credentials,
        )

    def _ask_polkit(self, call: Call, action: str, granted: Callable[[], None]) -> None:
        def decided(connection: Gio.DBusConnection, result: Gio.AsyncResult) -> None:
            try:
                authorized, _challenge, _details = connection.call_finish(result).unpack()[0]
            except GLib.Error as e:  # no polkit on this bus, or no answer: only root may
                if e.matches(Gio.io_error_quark(), Gio.IOErrorEnum.TIMED_OUT):
                    why = f"polkit did not answer within {self._timeout_s:g} s"
                elif (
                    Gio.DBusError.get_remote_error(e) == "org.freedesktop.DBus.Error.ServiceUnknown"
                ):
                    why = "polkit is not running"
                else:
                    why = f"polkit check failed: {_message(e)}"
                journal.send(journal.INFO, f"{action} for {call.sender}: {why}")
            else:
                if authorized:
                    granted()
                    return
                why = "polkit refused"
            call.fail(
                ERROR_ACCESS_DENIED,
                f"{action}: {why}; only root or a user that polkit authorizes may do this",
            )

        subject = ("system-bus-name", {"name": GLib.Variant("s", call.sender)})
        self._connection.call(
            "org.freedesktop.PolicyKit1",
            "/org/freedesktop/PolicyKit1/Authority",
            "org.freedesktop.PolicyKit1.Authority",
            "CheckAuthorization",
            # flags 1: AllowUserInteraction (an agent may ask for a password)
            GLib.Variant("((sa{sv})sa{ss}us)", (subject, action, {}, 1, "")),
            GLib.VariantType("((bba{ss}))"),
            Gio.DBusCallFlags.NONE,
            int(self._timeout_s * 1000),
            None,
            decided,
        )


def _who(sender: str, pid: int | None) -> str:
    """Who sent a request, for the journal: busctl[1234] rather than :1.56."""
    if pid is None:
        return sender
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return sender
    return f"{comm}[{pid}]"


def _message(e: GLib.Error) -> str:
    """A D-Bus error's message without GDBus's "GDBus.Error:NAME: " in front."""
    name = Gio.DBusError.get_remote_error(e)
    return str(e.message).removeprefix(f"GDBus.Error:{name}: ") if name else str(e.message)


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
    """/org/kdumpd/Kdump1: what anyone may read, and the requests root or polkit admits."""

    def __init__(
        self, daemon: Daemon, worker: Worker, connection: Gio.DBusConnection, auth_timeout_s: float
    ) -> None:
        self._daemon = daemon
        self._worker = worker
        self._connection = connection
        self._authorizer = Authorizer(connection, auth_timeout_s)
        self._ready = False
        self.watcher = Watcher(
            self.reload_now, lambda why: self.request_reload(why, hardware=True), daemon.sysroot
        )
        self._privileged: dict[str, tuple[str, Callable[[str], None]]] = {
            "Reload": (ACTION_RELOAD, lambda who: self.request_reload(f"Reload from {who}")),
            "Unload": (ACTION_UNLOAD, lambda _who: self._request_unload()),
        }

    def register(self) -> int:
        """Put the object on the bus; returns the registration id."""
        # No get_property handler: GDBus checks names and access against the introspection
        # data and hands Properties.Get and GetAll to the method handler.
        registration: int = self._connection.register_object(
            OBJECT_PATH, _INTERFACE_INFO, self._on_call, None, None
        )
        return registration

    def _on_call(
        self,
        _connection: Gio.DBusConnection,
        _sender: str,
        _path: str,
        interface: str,
        method: str,
        parameters: GLib.Variant,
        invocation: Gio.DBusMethodInvocation,
    ) -> None:
        call = Call(invocation)
        if interface == INTERFACE and method in self._privileged:
            action, run = self._privileged[method]
            self._authorizer.check(call, action, lambda who: call.answer(lambda: run(who)))
        else:
            call.answer(lambda: self._read(interface, method, parameters.unpack()))

    def _read(self, interface: str, method: str, args: tuple[Any, ...]) -> GLib.Variant:
        """What anyone may call. CrashKernelLoaded is read from the kernel every time."""
        if method == "ListDumps":
            return GLib.Variant("(aa{sv})", (self._dumps(),))
        status = self._daemon.refresh()
        if interface == PROPERTIES and method == "Get":
            name = args[1]
            return GLib.Variant("(v)", (GLib.Variant(PROPERTY_TYPES[name], getattr(status, name)),))
        # GetStatus, and Properties.GetAll: the same values
        return GLib.Variant("(a{sv})", (_variants(status.as_dict(), PROPERTY_TYPES),))

    def _dumps(self) -> list[dict[str, GLib.Variant]]:
        cfg = self._daemon.config
        found = dumps.scan(cfg.dump_path if cfg else dumps.DEFAULT_PATH)
        return [_variants(d.as_dict(), dumps.FIELD_TYPES) for d in found]

    def _request_unload(self) -> None:
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

    def emit(self, changed: dict[str, Any]) -> None:
        self._connection.emit_signal(
            None,
            OBJECT_PATH,
            PROPERTIES,
            "PropertiesChanged",
            GLib.Variant("(sa{sv}as)", (INTERFACE, _variants(changed, PROPERTY_TYPES), [])),
        )


def _status_words(status: Status) -> str:
    if status.State == "loaded":
        text = f"crash kernel {status.KernelVersion} loaded"
    else:
        text = f"{status.State}"
    return f"{text}: {status.LastError}" if status.LastError else text


def serve(
    daemon: Daemon,
    first_load: threading.Thread,
    bus: Any | None = None,
    auth_timeout_s: float = AUTH_TIMEOUT_S,
) -> int:
    """Run the daemon until SIGTERM; READY=1 once `first_load` (service.start_first_load)
    has finished. Returns the exit status."""
    bus = bus or SystemBus()
    loop = GLib.MainLoop()
    worker = Worker()
    obj = KdumpObject(daemon, worker, bus.con, auth_timeout_s)

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
    registration = obj.register()
    try:
        owner = bus.request_name(BUS_NAME, allow_replacement=False, replace=False)
    except RuntimeError as e:
        journal.send(journal.ERR, f"cannot own {BUS_NAME} on the system bus: {e}")
        bus.con.unregister_object(registration)
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
    bus.con.unregister_object(registration)
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
    name = Gio.DBusError.get_remote_error(e)  # None when the bus itself was not reached
    text = _message(e)
    if name in (
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
    ):
        return f"the kdumpd daemon is not running ({BUS_NAME} has no owner on the system bus)"
    if name == ERROR_ACCESS_DENIED:
        return f"permission denied: {text}"
    if name is None:
        return f"cannot reach the system bus: {text}"
    return text
