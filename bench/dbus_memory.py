"""The daemon's memory per D-Bus call: its idle RSS, then how much RSS grows over each
10,000 calls of each kind anyone may make (property reads, GetAll, GetStatus, ListDumps,
and Ping, which GDBus answers without reaching our code). No assertions: numbers.

    python -m bench.dbus_memory [--calls N]           the kdumpd on the system bus
    python -m bench.dbus_memory --fake [--calls N]    tests/dbus's daemon on a bus of its own

Each kind is called N times as a warm-up first, so that caches and the allocator's pools
are filled, then N times measured; then all kinds in turn, five rounds of N.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator

from gi.repository import Gio, GLib

from kdumpd.dbus_service import BUS_NAME, INTERFACE, OBJECT_PATH

PROPERTIES = "org.freedesktop.DBus.Properties"

Calls = Callable[[Gio.DBusConnection], None]


def _call(interface: str, method: str, args: GLib.Variant | None = None) -> Calls:
    def call(connection: Gio.DBusConnection) -> None:
        connection.call_sync(
            BUS_NAME, OBJECT_PATH, interface, method, args, None, Gio.DBusCallFlags.NONE, 10_000
        )

    return call


KINDS: dict[str, Calls] = {
    "Get State": _call(PROPERTIES, "Get", GLib.Variant("(ss)", (INTERFACE, "State"))),
    "Get CrashKernelLoaded": _call(
        PROPERTIES, "Get", GLib.Variant("(ss)", (INTERFACE, "CrashKernelLoaded"))
    ),
    "GetAll": _call(PROPERTIES, "GetAll", GLib.Variant("(s)", (INTERFACE,))),
    "GetStatus": _call(INTERFACE, "GetStatus"),
    "ListDumps": _call(INTERFACE, "ListDumps"),
    "Ping": _call("org.freedesktop.DBus.Peer", "Ping"),
}


def connect(address: str | None = None) -> Gio.DBusConnection:
    if address is None:
        return Gio.bus_get_sync(Gio.BusType.SYSTEM)
    flags = (
        Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
        | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
    )
    return Gio.DBusConnection.new_for_address_sync(address, flags, None, None)


def daemon_pid(connection: Gio.DBusConnection) -> int:
    reply = connection.call_sync(
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "GetConnectionUnixProcessID",
        GLib.Variant("(s)", (BUS_NAME,)),
        None,
        Gio.DBusCallFlags.NONE,
        10_000,
    )
    pid: int = reply.unpack()[0]
    return pid


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def growth_kib(connection: Gio.DBusConnection, pid: int, kinds: list[Calls], calls: int) -> int:
    """How much the daemon's RSS grows over `calls` calls, taking `kinds` in turn."""
    before = rss_kib(pid)
    for i in range(calls):
        kinds[i % len(kinds)](connection)
    return rss_kib(pid) - before


@contextlib.contextmanager
def _fake_daemon() -> Iterator[str]:
    """A private bus and the tests' daemon on a fake machine with two saved dumps; yields
    the bus address."""
    from tests.dbus.conftest import fake_service, private_bus, write_dumps

    with private_bus() as bus, fake_service(bus) as service:
        write_dumps(service)
        yield bus.address


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dbus_memory", description=__doc__)
    parser.add_argument("--fake", action="store_true", help="run tests/dbus's daemon and bus")
    parser.add_argument("--calls", type=int, default=10_000, help="calls of each kind")
    args = parser.parse_args()
    with _fake_daemon() if args.fake else contextlib.nullcontext(None) as address:
        connection = connect(address)
        pid = daemon_pid(connection)
        print(f"idle RSS: {rss_kib(pid) / 1024:.1f} MiB (pid {pid})")
        print(f"RSS growth per {args.calls} calls, after as many to warm up:")
        for name, call in KINDS.items():
            growth_kib(connection, pid, [call], args.calls)
            print(f"  {name:22} {growth_kib(connection, pid, [call], args.calls):+6d} KiB")
        # A leak grows in every round; the allocator's own steps come once.
        rounds = [growth_kib(connection, pid, list(KINDS.values()), args.calls) for _ in range(5)]
        print(f"  all in turn, 5 rounds  {' '.join(f'{g:+d}' for g in rounds)} KiB")
        print(f"RSS now: {rss_kib(pid) / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
