"""Structured journal entries, and the systemd notifications that go with them.

Each event that an administrator may want to find or alert on has a MESSAGE_ID, explained
in conf/kdumpd.catalog (installed as /usr/lib/systemd/catalog/kdumpd.catalog, for
`journalctl -x`). Outside systemd (a container, a test), entries go to stderr.
"""

from __future__ import annotations

import os
import sys
import syslog
import time
from typing import Any

# systemd-python's C modules, not its systemd.journal and systemd.daemon wrappers: those
# import uuid, datetime and the journal reader: 0.5 MB more RSS for the daemon's imports
# (Debian 12's /usr/bin/python3, measured); sendv and notify are all we use.
try:
    from systemd import _daemon, _journal
except ImportError:  # the CLI must work on a system without systemd-python
    _daemon = None
    _journal = None

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


# In a child of the daemon's (service._apart): the entries it makes, for the daemon to send.
_held: list[list[Any]] | None = None


def hold() -> list[list[Any]]:
    """From now on, entries are kept in the list returned, not sent."""
    global _held
    _held = []
    return _held


def send(priority: int, message: str, message_id: str | None = None, **fields: Any) -> None:
    """One journal entry; extra fields are upper-cased (KERNEL_VERSION=..., ERRNO=...)."""
    kept = {k: str(v) for k, v in fields.items() if v is not None}
    if _held is not None:
        _held.append([priority, message, message_id, kept])
        return
    extra = {k.upper(): v for k, v in kept.items()}
    if message_id:
        extra["MESSAGE_ID"] = message_id
    if _journal is not None and os.path.exists(_JOURNAL_SOCKET):
        extra.update(MESSAGE=message, PRIORITY=str(priority), SYSLOG_IDENTIFIER="kdumpd")
        _journal.sendv(*(f"{key}={value}" for key, value in extra.items()))
    else:
        print(f"kdumpd: {message}", file=sys.stderr, flush=True)


def notify(**state: str) -> None:
    """sd_notify(READY=1, STATUS=..., ...); a no-op outside systemd."""
    if _daemon is not None and state:
        _daemon.notify("\n".join(f"{k}={v}" for k, v in state.items()))


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
