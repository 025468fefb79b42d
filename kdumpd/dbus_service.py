"""The D-Bus face of the daemon, and the client's (pydbus kept to this module).

Method calls run on the GLib main loop. Loading a kernel is slow, so Reload and Unload
put a request in the daemon's queue (kdumpd/requests.py: one worker thread serves it in
order) and return at once; State turns to "loading" before they return, and
PropertiesChanged tells when the work is done (`kdumpd reload` waits for it). The
worker's changes reach the main loop through one Dispatcher.

The object is registered with Gio directly, not with pydbus's register_object: a method
handler must be able to answer later (the polkit check of Reload and Unload is an
asynchronous call, answered when polkit answers, so no caller can stall the loop), every
invocation must be given back to GLib once answered (see Call), and every failure must
leave as a typed error. The daemon takes the bus and its name with Gio too: importing
pydbus cost it 1.0-1.2 MB of resident memory (measured, Debian 12's Python), which the
issue's 25 MB for the idle daemon has no room for. The client (Client) keeps pydbus's
proxies.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gi.repository import Gio, GLib

from kdumpd import UserError, capture, config, dumps, journal, requests
from kdumpd.requests import BUILD, RELOAD, TARGET, TEST, UNLOAD
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
    "LastTestResult": "s",
    "LastTestUsec": "t",
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
    <method name="Test"/>
    <signal name="DumpFound"><arg name="dump" type="a{{sv}}"/></signal>
  </interface>
</node>
"""

_INTERFACE_INFO = Gio.DBusNodeInfo.new_for_xml(INTROSPECTION).interfaces[0]
PROPERTIES = "org.freedesktop.DBus.Properties"

ACTION_RELOAD = "org.kdumpd.Kdump1.reload"
ACTION_UNLOAD = "org.kdumpd.Kdump1.unload"
ACTION_TEST = "org.kdumpd.Kdump1.test"

# The errors a method call can end with (README, "D-Bus"). Reload and Unload return at
# once, so what goes wrong in the work itself (a broken config, a refused kernel) is not a
# method error: State and LastError say it.
ERROR_ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"  # the SPEC's name
ERROR_FAILED = f"{INTERFACE}.Error.Failed"  # the daemon could not do it: a bug, say
ERROR_NOT_LOADED = f"{INTERFACE}.Error.NotLoaded"  # Test with no crash kernel to capture
ERROR_CANNOT_TEST = f"{INTERFACE}.Error.CannotTest"  # a Test that would prove nothing


class CallRefused(Exception):
    """A request turned down for a reason the caller should read: `name` and the message."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


# An interactive check waits for a person to type a password in an authentication agent;
# after this long the caller is refused, so a forgotten agent holds nothing for ever.
AUTH_TIMEOUT_S = 60.0
# kdumpd.service starts before dbus.socket exists (units/kdumpd.service): how long the
# daemon waits for the bus. Within the unit's start timeout (TimeoutStartSec, 90 s by
# default; the watchdog counts only after READY=1): exiting, it is started again.
BUS_WAIT_S = 60.0
# Checks one user may have waiting for polkit at once. The bus alone would let one user
# hold 256 connections x 128 pending calls, each a call and a polkit request kept here.
AUTH_WAITING_PER_USER = 8


class Call:
    """One method call on our object, answered exactly once.

    g_dbus_connection_register_object_with_closures (what PyGObject calls register_object)
    passes the closure the reference to the invocation that the handler owns, and
    PyGObject takes it as borrowed; answering consumes only the reference PyGObject adds
    for the call. So the invocation, with its message, arguments and reply, was never
    freed: about 1.6 KB per call (pydbus issue 83). GLib keeps that behaviour (GLib MR
    4427) and added register_object_with_closures2 (2.84), which passes a borrowed
    reference. With the first, once answered, the handler's reference is given back here
    (`owned`); with the second there is nothing to give back."""

    def __init__(self, invocation: Gio.DBusMethodInvocation, owned: bool) -> None:
        self._invocation = invocation
        self._owned = owned
        self.sender: str = invocation.get_sender()
        self.method: str = invocation.get_method_name()

    def answer(self, produce: Callable[[], GLib.Variant | None]) -> None:
        """Reply with what `produce` returns; if it raises, with Error.Failed."""
        try:
            value = produce()
        except CallRefused as e:
            self.fail(e.name, str(e))
            return
        except Exception as e:  # a bug: the caller gets a typed error, the journal the details
            journal.send(journal.ERR, f"internal error in {self.method} for {self.sender}: {e!r}")
            self.fail(
                ERROR_FAILED, f"{self.method} failed (internal error): {e or type(e).__name__}"
            )
        else:
            self._invocation.return_value(value)
            self._release()

    def fail(self, name: str, message: str) -> None:
        self._invocation.return_dbus_error(name, message)
        self._release()

    def _release(self) -> None:
        if self._owned:
            self._invocation._unref()


class Authorizer:
    """Who may call the privileged methods: root, and users that polkit authorizes.

    Asks the bus who the caller is, then polkit, as asynchronous calls: the main loop
    serves everyone else meanwhile, and the method's reply goes out when polkit answers."""

    def __init__(self, connection: Gio.DBusConnection, timeout_s: float) -> None:
        self._connection = connection
        self._timeout_s = timeout_s
        self._waiting: dict[int, set[Call]] = {}  # uid: its calls polkit has not answered

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
            uid = creds["UnixUserID"]
            if uid == 0:
                granted(who)
            elif len(self._waiting.get(uid, ())) >= AUTH_WAITING_PER_USER:
                call.fail(
                    ERROR_ACCESS_DENIED,
                    f"{action}: {AUTH_WAITING_PER_USER} requests of uid {uid} are waiting for "
                    "polkit already; try again once they are answered",
                )
            else:
                self._ask_polkit(call, uid, action, lambda: granted(who))

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

    def _ask_polkit(self, call: Call, uid: int, action: str, granted: Callable[[], None]) -> None:
        waiting = self._waiting.setdefault(uid, set())
        waiting.add(call)

        def decided(connection: Gio.DBusConnection, result: Gio.AsyncResult) -> None:
            waiting.discard(call)
            if not waiting and self._waiting.get(uid) is waiting:
                del self._waiting[uid]
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


def _dump_entry(d: dumps.Dump) -> dict[str, GLib.Variant]:
    """One dump as ListDumps lists it and DumpFound sends it."""
    return _variants(d.as_dict(), dumps.FIELD_TYPES)


class Dispatcher:
    """Runs functions on the main loop, handed over from any thread. One eventfd, watched
    for the daemon's life: GLib.idle_add from Python keeps about 110 bytes per call for
    ever (PyGObject 3.42, GLib 2.74; measured), and ListDumps alone would call it once
    per call."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._pending: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        GLib.unix_fd_add_full(GLib.PRIORITY_DEFAULT, self._fd, GLib.IOCondition.IN, self._run)

    def call(self, function: Callable[[], object]) -> None:
        self._pending.put(function)
        os.eventfd_write(self._fd, 1)

    def _run(self, _fd: int, _condition: GLib.IOCondition) -> bool:
        with contextlib.suppress(BlockingIOError):  # read by an earlier wake-up
            os.eventfd_read(self._fd)
        while True:
            try:
                function = self._pending.get_nowait()
            except queue.Empty:
                return True  # GLib: keep watching
            function()


class DumpLister:
    """ListDumps off the main loop: a dump path on a slow or huge file system must not
    stall everyone else. One thread of its own scans, one scan at a time; calls that come
    during a scan are answered by the next one, so any number of callers cost one scan
    at a time and no new thread (each would also cost a malloc arena)."""

    def __init__(self, path: Callable[[], Path], dispatcher: Dispatcher) -> None:
        self._path = path
        self._dispatcher = dispatcher
        self._waiting: list[Call] = []  # the main loop's alone, as _scanning
        self._scanning = False
        self._wanted: queue.SimpleQueue[tuple[list[Call], Path]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def request(self, call: Call) -> None:
        self._waiting.append(call)
        if not self._scanning:
            self._scan()

    def _scan(self) -> None:
        self._scanning = True
        calls, self._waiting = self._waiting, []
        self._wanted.put((calls, self._path()))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kdumpd-dumps", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            calls, path = self._wanted.get()
            self._dispatcher.call(functools.partial(self._answer, calls, self._listing(path)))

    @staticmethod
    def _listing(path: Path) -> Callable[[], GLib.Variant]:
        """What makes the reply on the main loop: GLib's allocations stay on its thread
        (built here, each reply grew a malloc arena of this thread's that the main loop
        then freed into: about 200 bytes per call that never came back), and a scan's
        error raises there (Error.Failed, in Call.answer)."""
        try:
            found = dumps.scan(path)
        except Exception as e:
            error = e

            def fail() -> GLib.Variant:
                raise error

            return fail
        return lambda: GLib.Variant("(aa{sv})", ([_dump_entry(d) for d in found],))

    def _answer(self, calls: list[Call], produce: Callable[[], GLib.Variant]) -> None:
        for call in calls:
            call.answer(produce)
        self._scanning = False
        if self._waiting:
            self._scan()


class KdumpObject:
    """/org/kdumpd/Kdump1: what anyone may read, and the requests root or polkit admits."""

    def __init__(
        self,
        daemon: Daemon,
        worker: requests.Worker,
        connection: Gio.DBusConnection,
        auth_timeout_s: float,
        dispatcher: Dispatcher,
    ) -> None:
        self._daemon = daemon
        self._worker = worker
        self._requests = daemon.requests
        self._owned = True  # see Call; register() knows
        self._lister = DumpLister(
            lambda: daemon.config.dump_path if daemon.config else dumps.DEFAULT_PATH, dispatcher
        )
        self._connection = connection
        self._authorizer = Authorizer(connection, auth_timeout_s)
        self._ready = False
        self.watcher = Watcher(
            lambda kind, why: self._requests.put(
                kind, why, quiet=requests.QUIET_S if kind == RELOAD else 0.0
            ),
            lambda why: self.request_reload(why, hardware=True),
            daemon.sysroot,
        )
        self._privileged: dict[str, tuple[str, Callable[[str], None]]] = {
            "Reload": (ACTION_RELOAD, lambda who: self.request_reload(f"Reload from {who}")),
            "Unload": (ACTION_UNLOAD, lambda who: self._requests.put(UNLOAD, f"Unload from {who}")),
            "Test": (ACTION_TEST, self._test),
        }

    def register(self) -> int:
        """Put the object on the bus; returns the registration id."""
        # No get_property handler: GDBus checks names and access against the introspection
        # data and hands Properties.Get and GetAll to the method handler.
        register = getattr(self._connection, "register_object_with_closures2", None)
        self._owned = register is None
        registration: int = (register or self._connection.register_object)(
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
        call = Call(invocation, self._owned)
        if interface == INTERFACE and method in self._privileged:
            action, run = self._privileged[method]
            self._authorizer.check(call, action, lambda who: call.answer(lambda: run(who)))
        elif method == "ListDumps":
            self._lister.request(call)
        else:
            call.answer(lambda: self._read(interface, method, parameters.unpack()))

    def _read(self, interface: str, method: str, args: tuple[Any, ...]) -> GLib.Variant:
        """What anyone may call but ListDumps. CrashKernelLoaded is read from the kernel
        every time."""
        status = self._daemon.refresh()
        if interface == PROPERTIES and method == "Get":
            name = args[1]
            return GLib.Variant("(v)", (GLib.Variant(PROPERTY_TYPES[name], getattr(status, name)),))
        # GetStatus, and Properties.GetAll: the same values
        return GLib.Variant("(a{sv})", (_variants(status.as_dict(), PROPERTY_TYPES),))

    def _test(self, who: str) -> None:
        """Refused at once when it would prove nothing (Daemon.test_refusal)."""
        if refusal := self._daemon.test_refusal():
            loaded = self._daemon.kexec.loaded()
            raise CallRefused(ERROR_CANNOT_TEST if loaded else ERROR_NOT_LOADED, refusal)
        self._requests.put(TEST, f"Test from {who}")

    def request_reload(self, why: str, hardware: bool = False) -> None:
        """A reload asked for (D-Bus, SIGHUP, a hook; hotplug: hardware). systemd hears
        RELOADING=1 now and READY=1 when done."""
        if self._ready:
            journal.notify_reloading()
        if hardware:  # a hotplug burst may go on
            self._requests.put(RELOAD, why, must=True, quiet=requests.QUIET_S)
        else:
            self._requests.put(RELOAD, why, asked=True, quiet=requests.ASKED_QUIET_S)

    def served(self) -> None:
        """After each request (on the main loop): watch what the loaded kernel came from (and
        the target's verdict), tell systemd, and build the capture initramfs the last load had
        to do without."""
        self._ready = True
        self.watcher.watch_files(self._daemon.watch_targets())
        if self._daemon.verdict_unread():  # written before the watch was there again
            self._requests.put(TARGET, "the target's verdict")
        journal.notify(READY="1", STATUS=_status_words(self._daemon.status))
        if self._daemon.unbuilt is not None and not self._requests.busy():
            self._requests.put(BUILD, "the capture initramfs is to be built")

    def alive(self) -> bool:
        """For the watchdog: False, and the journal says why, once the worker is stuck."""
        stuck = self._worker.stuck()
        if stuck:
            journal.send(
                journal.ERR,
                f"the worker has been serving {stuck}: not telling the watchdog, so that "
                "systemd restarts the daemon",
            )
        return not stuck

    def emit(self, changed: dict[str, Any]) -> None:
        self._connection.emit_signal(
            None,
            OBJECT_PATH,
            PROPERTIES,
            "PropertiesChanged",
            GLib.Variant("(sa{sv}as)", (INTERFACE, _variants(changed, PROPERTY_TYPES), [])),
        )

    def dump_found(self, d: dumps.Dump) -> None:
        self._connection.emit_signal(
            None, OBJECT_PATH, INTERFACE, "DumpFound", GLib.Variant("(a{sv})", (_dump_entry(d),))
        )


def _status_words(status: Status) -> str:
    if status.State == "loaded":
        text = f"crash kernel {status.KernelVersion} loaded"
    else:
        text = f"{status.State}"
    return f"{text}: {status.LastError}" if status.LastError else text


def connect(wait_s: float = BUS_WAIT_S) -> Gio.DBusConnection | None:
    """The system bus, once its socket is there; None (and why, in the journal) if it does
    not come. Until dbus.socket is set up, connecting fails at once; the first load runs in
    the worker meanwhile."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
        except GLib.Error as e:
            if time.monotonic() >= deadline:
                journal.send(journal.ERR, f"no system bus after {wait_s:.0f} s: {e.message}")
                return None
        time.sleep(0.1)


_DBUS = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")
_NAME_DO_NOT_QUEUE = 4  # RequestName's flag: no waiting in line for a name someone has
_NAME_OURS = (1, 4)  # PRIMARY_OWNER, ALREADY_OWNER


def own_name(bus: Gio.DBusConnection) -> str:
    """RequestName(BUS_NAME): "" once it is ours, else why not."""
    try:
        reply = bus.call_sync(
            *_DBUS, "RequestName", GLib.Variant("(su)", (BUS_NAME, _NAME_DO_NOT_QUEUE)),
            GLib.VariantType("(u)"), Gio.DBusCallFlags.NONE, -1, None,
        )  # fmt: skip
    except GLib.Error as e:
        return _message(e)
    (code,) = reply.unpack()
    return "" if code in _NAME_OURS else "another process owns it"


def serve(
    daemon: Daemon,
    worker: requests.Worker,
    bus: Gio.DBusConnection | None = None,
    auth_timeout_s: float = AUTH_TIMEOUT_S,
) -> int:
    """Run the daemon until SIGTERM; READY=1 once the worker (service.start) has served
    the first load. Returns the exit status."""
    bus = bus or connect()
    if bus is None:
        return 1
    loop = GLib.MainLoop()
    dispatcher = Dispatcher()
    obj = KdumpObject(daemon, worker, bus, auth_timeout_s, dispatcher)

    def on_change(changed: dict[str, Any]) -> None:
        # The values as they are when the signal goes out: changes made on two threads
        # may queue their emits out of order, and the last one sent must be the truth.
        def emit() -> None:
            status = daemon.status
            obj.emit({name: getattr(status, name) for name in changed})
            journal.notify(STATUS=_status_words(status))

        dispatcher.call(emit)

    daemon.on_change = on_change
    registration = obj.register()
    if why_not := own_name(bus):
        journal.send(journal.ERR, f"cannot own {BUS_NAME} on the system bus: {why_not}")
        bus.unregister_object(registration)
        daemon.requests.drain(requests.WORKER_STUCK_S)  # the first load, if under way
        return 1
    # Only now, on the bus, so that DumpFound reaches whoever listens: before any call is
    # answered (the loop is not running yet), which is what tests/dbus rely on.
    try:
        dump_path = config.load(daemon.config_path).dump_path
    except config.ConfigError:
        dump_path = config.Config().dump_path  # the first load reports the error
    capture.announce_new(dump_path, daemon.sysroot / capture.ANNOUNCED, obj.dump_found)
    daemon.test_verdict(dump_path)

    worker.connect(lambda: dispatcher.call(obj.served))
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
            if obj.alive():  # the loop runs this; the worker answers for itself
                journal.notify(WATCHDOG="1")
            return True

        GLib.timeout_add(interval // 1000, watchdog)
    loop.run()
    # The crash kernel stays loaded: stopping or restarting the daemon must not leave a gap.
    journal.notify(STOPPING="1")
    with contextlib.suppress(GLib.Error):  # the bus gone first
        bus.call_sync(
            *_DBUS, "ReleaseName", GLib.Variant("(s)", (BUS_NAME,)), None,
            Gio.DBusCallFlags.NONE, -1, None,
        )  # fmt: skip
    bus.unregister_object(registration)
    return 0


class Client:
    """What the CLI and the kernel hooks use to talk to the daemon."""

    def __init__(self, bus: Any | None = None) -> None:
        from pydbus import SystemBus  # here: the daemon does not import it (module docstring)

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

    def test(self) -> None:
        """Test(): the daemon answers once the crash is queued."""
        try:
            self._proxy.Test()
        except GLib.Error as e:
            raise UserError(_client_error(e)) from None

    def call_and_wait(self, action: Callable[[Any], None], timeout_s: int = 300) -> dict[str, Any]:
        """Call Reload or Unload, then wait until the daemon has finished the work: State
        stays "loading" until then (kdumpd/requests.py)."""
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
