"""Issue 14, its first part: Debian 13 (trixie: Linux 6.12, systemd 257, makedumpfile
1.7.6, crash_hotplug on), from debootstrap with the distribution's default initramfs. The
package built here installs with trixie's own dependencies, arms, a crash is captured and
listed after the reboot, and a kernel package install reloads once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.guest import Guest, GuestFactory
from tests.vm.image import ImagePaths
from tests.vm.kdumpd_guest import (
    crash_and_come_back,
    crash_loaded,
    cursor,
    install_kernel_package,
    loaded_once_after_install,
    other_errors,
    status,
    wait_armed,
    wait_state,
)


@pytest.fixture(scope="module")
def guest(
    make_guest_module: GuestFactory, trixie_image: ImagePaths, kdumpd_deb: Path
) -> Iterator[Guest]:
    g = make_guest_module(append="crashkernel=256M", image=trixie_image)
    assert g.run(". /etc/os-release && echo $VERSION_CODENAME").stdout.strip() == "trixie"
    g.install_deb(kdumpd_deb)
    wait_armed(g)
    yield g


def test_the_package_arms_on_trixie(guest: Guest) -> None:
    g = guest
    s = status(g)
    print(f"\ntrixie: kernel {s['KernelVersion']}, LastError {s['LastError']!r}")
    release = g.run("uname -r").stdout.strip()
    assert release.startswith("6.12.") and s["KernelVersion"] == release
    assert s["State"] == "loaded" and s["CaptureMode"] == "initramfs" and crash_loaded(g) == "1"
    # Debian 13's makedumpfile 1.7.6 knows kernels up to 6.11.4 (kdumpd/skew.py): said.
    skew = f"makedumpfile 1.7.6 supports kernels up to 6.11.4, and kernel {release} is newer"
    assert skew in s["LastError"] and other_errors(s) == "", s["LastError"]
    assert g.run("systemctl is-active kdumpd").stdout.strip() == "active"
    # The kernel updates the loaded image on hotplug itself: kdumpd leaves it alone.
    assert g.run("cat /sys/devices/system/cpu/crash_hotplug").stdout.strip() == "1"
    depends = g.run("dpkg-query -W -f '${Depends}' kdumpd").stdout
    for package in ("python3-pydbus", "python3-systemd", "python3-yaml", "makedumpfile"):
        assert package in depends, depends


def test_a_crash_on_trixie_is_captured_and_listed(guest: Guest) -> None:
    g = guest
    crash_and_come_back(g, "capture complete", ("/usr/bin/kdumpd", "test", "--yes"))
    wait_state(g)
    assert status(g)["LastTestResult"] == "passed"
    listed = json.loads(g.run("kdumpd dumps --json").stdout)
    assert len(listed) == 1, listed
    dump = listed[0]
    assert dump["Complete"] is True and dump["PanicMessage"] == "sysrq triggered crash"
    assert dump["KernelVersion"] == g.run("uname -r").stdout.strip()
    assert dump["SizeBytes"] > 1 << 20


def test_a_kernel_package_install_on_trixie_reloads_once(
    guest: Guest, trixie_kernel_deb: Path
) -> None:
    """Debian 13's newer kernel from trixie-security, installed with apt: one reload."""
    g = guest
    g.write_file("/etc/kdumpd/kdumpd.yaml", b"kernel: latest\n")
    g.run("kdumpd reload")
    assert status(g)["KernelVersion"] == g.run("uname -r").stdout.strip()
    mark = cursor(g)
    loaded_once_after_install(g, mark, install_kernel_package(g, trixie_kernel_deb))
