"""Issue 4 (d), the other half: where the kernel updates the loaded crash image itself on
CPU hotplug (crash_hotplug is 1), kdumpd sees the event and does not reload.

Debian 12's 6.1 kernel has no crash_hotplug files (test_reload.py shows the reload there);
its 6.12 series from bookworm-security has them, so this guest boots that kernel."""

from __future__ import annotations

from pathlib import Path

from tests.vm.guest import GuestFactory
from tests.vm.image import ImagePaths
from tests.vm.kdumpd_guest import (
    crash_loaded,
    cursor,
    daemon_messages_since,
    no_more_loads,
    status,
    wait_armed,
    wait_for,
)


def test_cpu_hotplug_is_left_to_a_kernel_that_handles_it(
    make_guest: GuestFactory, crash_hotplug_image: ImagePaths, kdumpd_deb: Path
) -> None:
    g = make_guest(append="crashkernel=256M", cpus=2, image=crash_hotplug_image)
    assert g.run("uname -r").stdout.startswith("6.12.")
    g.install_deb(kdumpd_deb)
    wait_armed(g)
    # 1 only once a crash image that supports it is loaded: kexec_file_load's do.
    assert g.run("cat /sys/devices/system/cpu/crash_hotplug").stdout.strip() == "1"
    before = status(g)["LastLoadUsec"]
    mark = cursor(g)
    g.run("echo 0 > /sys/devices/system/cpu/cpu1/online")
    g.run("echo 1 > /sys/devices/system/cpu/cpu1/online")

    def said_no_reload(_status: object) -> bool:
        messages = daemon_messages_since(g, mark)
        return sum("(crash_hotplug is 1), no reload" in m for m in messages) >= 2

    wait_for(g, "the daemon noticing both events", said_no_reload)
    no_more_loads(g, mark, expected=0)
    s = status(g)
    assert s["LastLoadUsec"] == before and s["State"] == "loaded" and crash_loaded(g) == "1"
