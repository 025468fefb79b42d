"""Structured journal entries, and the systemd notifications that go with them.

Each event that an administrator may want to find or alert on has a MESSAGE_ID, explained
in conf/kdumpd.catalog (installed as /usr/lib/systemd/catalog/kdumpd.catalog, for
`journalctl -x`). Outside systemd (a container, a test), entries go to stderr.

Both protocols are datagrams on a Unix socket, spoken here rather than through
systemd-python: importing it after the daemon's other modules added 1.4 MB of resident memory
(measured on the CI host), and libsystemd with libgcrypt, for two sendto()s
(the journal's native protocol, https://systemd.io/JOURNAL_NATIVE_PROTOCOL/, and
sd_notify(3)).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import syslog
import time
from typing import Any

MSG_LOADED = "e2e8053d528f4011ad724cf17d624f64"
MSG_LOAD_FAILED = "9fa8477d8c3f4cda82f589d89337b068"
MSG_UNLOADED = "46c1e28acfac4d5ebe4b3b0de6f0463e"
MSG_CONFIG_ERROR = "b4d7d164272e4cf19b97a4ff0c91fe60"
MSG_RESERVATION = "42c9a532daee4fc0bee302811834eb5d"
MSG_DUMP_SAVED = "9ee3014d253246aeaf477c6f3b7f0088"
MSG_TEST_RESULT = "22d8ba01049948d4b798e6a50901e0b5"

ERR = syslog.LOG_ERR
WARNING = syslog.LOG_WARNING
NOTICE = syslog.LOG_NOTICE
INFO = syslog.LOG_INFO

_JOURNAL_SOCKET = "/run/systemd/journal/socket"
# Far below a datagram's limit (net.core.wmem_default, 208 KiB by default); longer values
# are cut rather than sent through a memfd, which a log line never needs.
FIELD_MAX = 32 << 10


def entry(fields: dict[str, str]) -> bytes:
    """The native protocol's datagram: KEY=value lines; a value with a newline in it goes
    as KEY, newline, its length (64-bit little endian), the value, newline."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode(errors="replace")[:FIELD_MAX]
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def _datagram(address: str, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.sendto(data, address)


def send(priority: int, message: str, message_id: str | None = None, **fields: Any) -> None:
    """One journal entry; extra fields are upper-cased (KERNEL_VERSION=..., ERRNO=...)."""
    record = {"MESSAGE": message, "PRIORITY": str(priority), "SYSLOG_IDENTIFIER": "kdumpd"}
    record.update({k.upper(): str(v) for k, v in fields.items() if v is not None})
    if message_id:
        record["MESSAGE_ID"] = message_id
    try:
        _datagram(_JOURNAL_SOCKET, entry(record))
    except OSError:  # no journald here (a container, a test): the words still go out
        print(f"kdumpd: {message}", file=sys.stderr, flush=True)


def notify(**state: str) -> None:
    """sd_notify(READY=1, STATUS=..., ...); a no-op outside systemd. An abstract socket's
    name comes with an "@" for the leading NUL."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or not state:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError):  # systemd gone (shutting down): nobody to tell
        _datagram(address, "\n".join(f"{k}={v}" for k, v in state.items()).encode())


def notify_reloading() -> None:
    # systemd 253+ wants MONOTONIC_USEC with RELOADING=1; older ones ignore it.
    notify(RELOADING="1", MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))


def watchdog_interval_usec() -> int:
    """Half of WatchdogSec=, or 0 when the unit sets none."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
        pid = int(os.environ.get("WATCHDOG_PID", str(os.getpid())))
    except ValueError:
        return 0
    return usec // 2 if usec > 0 and pid == os.getpid() else 0
