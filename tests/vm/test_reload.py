"""Issue: the crash kernel follows kernel installs, initramfs rebuilds, broken files and
hotplug by itself, and a refused reload brings back the last good crash kernel."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.guest import Guest, GuestFactory
from tests.vm.image import ImagePaths
from tests.vm.kdumpd_guest import (
    MSG_LOAD_FAILED,
    crash_loaded,
    cursor,
    daemon_messages_since,
    entries_since,
    install_kernel_package,
    internal_errors_since,
    loaded_once_after_install,
    no_more_loads,
    other_errors,
    prop,
    status,
    wait_armed,
    wait_for,
    wait_state,
)


@pytest.fixture(scope="module")
def guest(
    make_guest_module: GuestFactory, stock_image: ImagePaths, kdumpd_deb: Path
) -> Iterator[Guest]:
    """A stock machine (Debian's MODULES=most initramfs): what users have."""
    # Capture mode system (the initrd: test) on this initramfs is recommended 288M.
    g = make_guest_module(append="crashkernel=320M", cpus=2, image=stock_image)
    g.install_deb(kdumpd_deb)
    wait_armed(g)
    yield g


def test_kernel_install_and_removal(guest: Guest, second_kernel_deb: Path) -> None:
    g = guest
    running = g.run("uname -r").stdout.strip()
    g.write_file("/etc/kdumpd/kdumpd.yaml", b"kernel: latest\n")
    g.run("kdumpd reload")
    assert status(g)["KernelVersion"] == running
    before = status(g)["LastLoadUsec"]
    mark = cursor(g)
    new = install_kernel_package(g, second_kernel_deb)
    loaded_once_after_install(g, mark, new)
    assert status(g)["LastLoadUsec"] > before

    mark = cursor(g)
    t0 = time.monotonic()
    g.run(
        ["apt-get", "remove", "-y", f"linux-image-{new}"],
        timeout=600,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )
    print(f"apt-get remove took {time.monotonic() - t0:.0f} s")
    wait_for(
        g,
        f"fallback to {running}",
        lambda s: s["KernelVersion"] == running and s["State"] == "loaded",
    )
    assert crash_loaded(g) == "1"
    no_more_loads(g, mark, expected=1)
    assert internal_errors_since(g, mark) == []
    said = f"crash kernel {new} was removed (/boot/vmlinuz-{new} is gone); loading {running}"
    assert said in daemon_messages_since(g, mark)


def test_garbage_initrd_keeps_the_last_good_crash_kernel(guest: Guest) -> None:
    """The machine's own initrd, as capture mode "system" boots it (an initrd named in the
    config is always booted as it is)."""
    g = guest
    initrd = f"/boot/initrd.img-{g.run('uname -r').stdout.strip()}"
    g.write_file("/etc/kdumpd/kdumpd.yaml", f"initrd: {initrd}\n".encode())
    g.run("kdumpd reload")
    g.run(f"cp -p {initrd} /root/initrd.good")
    before = status(g)
    assert before["CaptureMode"] == "system" and before["Initrd"] == initrd
    try:
        g.run(f"head -c 4M /dev/urandom > {initrd}.new && mv {initrd}.new {initrd}")
        wait_for(g, "the error", lambda s: "is not an initramfs" in s["LastError"])
        s = status(g)
        assert s["State"] == "loaded" and s["CrashKernelLoaded"] is True
        assert crash_loaded(g) == "1"
        assert s["LastLoadUsec"] == before["LastLoadUsec"]
    finally:
        g.run(f"mv /root/initrd.good {initrd}")
    wait_for(g, "recovery", lambda s: other_errors(s) == "" and s["State"] == "loaded")
    g.write_file("/etc/kdumpd/kdumpd.yaml", b"")
    wait_for(g, "initramfs again", lambda s: s["CaptureMode"] == "initramfs")


# An image kdumpd's own check passes and the kernel refuses: the running kernel with
# xloadflags' XLF_KERNEL_64 cleared (bzImage64_probe: "Not a 64-bit kernel") and build.c's
# CRC written again to match, so that only the kernel can tell.
_NOT_64_BIT = """
import sys
from kdumpd import kernel_image as k
data = bytearray(open(sys.argv[1], "rb").read())
data[0x236] &= ~1
end = ((data[0x1F1] or 4) + 1) * 512 + int.from_bytes(data[0x1F4:0x1F8], "little") * 16
crc = k._build_crc(bytes(data), end, k._pe_signature_fields(data))
data[end - 4 : end] = crc.to_bytes(4, "little")
k.check_bzimage(bytes(data))
open(sys.argv[2], "wb").write(data)
"""


def test_refused_kernel_brings_back_the_last_good_one(guest: Guest) -> None:
    """The real kernel frees the loaded crash image before refusing the new one; kdumpd
    must load its copy of the last good one again."""
    g = guest
    # /opt: the daemon's unit hides /root (ProtectHome) and has its own /tmp (PrivateTmp).
    g.write_file("/opt/not-64-bit.py", _NOT_64_BIT.encode())
    g.run("python3 /opt/not-64-bit.py /boot/vmlinuz-$(uname -r) /opt/not-64-bit-vmlinuz")
    before = status(g)
    mark = cursor(g)
    g.write_file("/etc/kdumpd/kdumpd.yaml", b"kernel_image: /opt/not-64-bit-vmlinuz\n")
    try:
        wait_for(g, "the refusal", lambda s: "previous crash kernel" in s["LastError"])
        s = status(g)
        assert "does not recognise the image format" in s["LastError"], s
        assert s["State"] == "loaded" and s["CrashKernelLoaded"] is True
        assert crash_loaded(g) == "1"
        assert s["KernelImage"] == before["KernelImage"]
        failed = " ".join(entries_since(g, mark, MSG_LOAD_FAILED))
        assert "ENOEXEC" in failed
    finally:
        g.write_file("/etc/kdumpd/kdumpd.yaml", b"")
    wait_for(g, "recovery", lambda s: other_errors(s) == "" and s["State"] == "loaded")


def test_a_truncated_kernel_image_is_refused_and_protection_never_lapses(guest: Guest) -> None:
    """Issue 11, defect 7: the loaded /boot/vmlinuz cut to half its size. The kernel's
    bzImage loader would take it; kdumpd refuses it before the syscall, so the crash
    kernel stays loaded the whole time (sampled every 0.1 s)."""
    g = guest
    image = status(g)["KernelImage"]
    before = status(g)
    g.run(f"cp -p {image} /opt/vmlinuz.good")
    sampler = "for i in $(seq 150); do cat /sys/kernel/kexec_crash_loaded; sleep 0.1; done"
    g.run(f"({sampler}; echo done) > /opt/samples 2>&1 &")
    try:
        g.run(f"head -c $(( $(stat -c %s {image}) / 2 )) /opt/vmlinuz.good > {image}")
        wait_for(g, "the refusal", lambda s: "it is truncated" in s["LastError"])
        s = status(g)
        assert f"refusing to load {image}" in s["LastError"], s
        assert "apt-get install --reinstall linux-image-" in s["LastError"], s
        assert s["State"] == "loaded" and s["LastLoadUsec"] == before["LastLoadUsec"], s
        g.run("until grep -q done /opt/samples; do sleep 0.2; done", timeout=120)
    finally:
        g.run(f"cp -p /opt/vmlinuz.good {image}")
    wait_for(g, "recovery", lambda s: other_errors(s) == "" and s["State"] == "loaded")
    samples = g.run("cat /opt/samples").stdout.split()[:-1]
    assert len(samples) == 150 and set(samples) == {"1"}, samples


def test_cpu_hotplug_reloads(guest: Guest) -> None:
    g = guest
    assert g.run("test -e /sys/devices/system/cpu/crash_hotplug", check=False).rc == 1, (
        "this kernel updates the crash image itself; the reload case cannot be shown here"
    )
    before = status(g)["LastLoadUsec"]
    mark = cursor(g)
    g.run("echo 0 > /sys/devices/system/cpu/cpu1/online")
    g.run("echo 1 > /sys/devices/system/cpu/cpu1/online")
    wait_for(g, "a hotplug reload", lambda s: s["LastLoadUsec"] > before)
    assert prop(g, "State") == "loaded" and crash_loaded(g) == "1"
    no_more_loads(g, mark, expected=1)  # offline and online: one coalesced reload


def test_a_locked_down_kernel_refuses_and_the_status_says_so(guest: Guest) -> None:
    """Last in this module: lockdown lasts until the next boot. Locked down, the kernel
    loads only images signed with a key it trusts. This guest (SeaBIOS, no UEFI db, no
    MOK) trusts no key that signed Debian's kernel, so even the copy of the last good one
    is refused: a real failed crash reload that leaves nothing loaded. kdumpd must say
    why, and must not claim a crash kernel it no longer has."""
    g = guest
    wait_state(g)
    assert crash_loaded(g) == "1"
    g.run("echo integrity > /sys/kernel/security/lockdown")
    r = g.run("kdumpd reload", check=False)
    assert r.rc != 0 and "the kernel is locked down (integrity)" in r.stderr, r
    s = status(g)
    assert s["State"] == "failed" and s["CrashKernelLoaded"] is False, s
    assert crash_loaded(g) == "0"
    assert "loading the previous crash kernel" in s["LastError"]
    assert "again also failed" in s["LastError"]
