"""The real daemon on a test bus, with a fake machine underneath (tests/fakes.py).

Run as: python -m tests.dbus.fake_daemon SYSROOT CONFIG [POLKIT_TIMEOUT_S] (with
DBUS_SYSTEM_BUS_ADDRESS set).
"""

import sys
import time
from pathlib import Path

from kdumpd import dumps, environment
from kdumpd.config import Config
from kdumpd.service import Daemon, start
from tests.fakes import FakeKexec, fake_plan

if __name__ == "__main__":
    sysroot, config = Path(sys.argv[1]), Path(sys.argv[2])
    # The capture initramfs is in the cache already, as after the package's first start.
    cache = sysroot / "var/cache/kdumpd"
    environment.build(fake_plan(Config(), "", sysroot), cache)
    scan = dumps.scan

    def fake_scan(root: Path) -> list[dumps.Dump]:
        broken = sysroot / "fake-dumps-error"  # a test's way to make reading the dumps fail
        if broken.exists():
            raise ValueError(broken.read_text())
        slow = sysroot / "fake-dumps-seconds"  # ... or slow, as a dump path on a dying disk
        if slow.exists():
            time.sleep(float(slow.read_text()))
        return scan(root)

    dumps.scan = fake_scan
    daemon = Daemon(config, FakeKexec(sysroot), sysroot, cache=cache, planner=fake_plan)
    worker = start(daemon)  # as `kdumpd serve` does, before the bus exists
    from kdumpd import dbus_service

    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else dbus_service.AUTH_TIMEOUT_S
    sys.exit(dbus_service.serve(daemon, worker, auth_timeout_s=timeout))
