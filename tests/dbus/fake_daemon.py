"""The real daemon on a test bus, with a fake machine underneath (tests/fakes.py).

Run as: python -m tests.dbus.fake_daemon SYSROOT CONFIG (with DBUS_SYSTEM_BUS_ADDRESS set).
"""

import sys
from pathlib import Path

from kdumpd import dbus_service
from kdumpd.service import Daemon
from tests.fakes import FakeKexec

if __name__ == "__main__":
    sysroot, config = Path(sys.argv[1]), Path(sys.argv[2])
    sys.exit(dbus_service.serve(Daemon(config, FakeKexec(sysroot), sysroot)))
