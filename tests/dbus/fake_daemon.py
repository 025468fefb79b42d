"""The real daemon on a test bus, with a fake machine underneath (tests/fakes.py).

Run as: python -m tests.dbus.fake_daemon SYSROOT CONFIG (with DBUS_SYSTEM_BUS_ADDRESS set).
"""

import sys
from pathlib import Path

from kdumpd import environment
from kdumpd.config import Config
from kdumpd.service import Daemon, start_first_load
from tests.fakes import FakeKexec, fake_plan

if __name__ == "__main__":
    sysroot, config = Path(sys.argv[1]), Path(sys.argv[2])
    # The capture initramfs is in the cache already, as after the package's first start.
    cache = sysroot / "var/cache/kdumpd"
    environment.build(fake_plan(Config(), "", sysroot), cache)
    daemon = Daemon(config, FakeKexec(sysroot), sysroot, cache=cache, planner=fake_plan)
    first_load = start_first_load(daemon)  # as `kdumpd serve` does, before the bus exists
    from kdumpd import dbus_service

    sys.exit(dbus_service.serve(daemon, first_load))
