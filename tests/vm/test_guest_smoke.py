"""Smoke tests of the harness itself on Debian's kernel: reservation, the system bus, the
Python modules kdumpd needs, agent file I/O, disk inspection, and a real crash kernel boot."""

from __future__ import annotations

import time

import pytest

from tests.vm.guest import GuestFactory

pytestmark = pytest.mark.vm

# Loads the guest's own kernel and initramfs as the crash kernel with kexec_file_load(2),
# the way kdumpd does, but without kdumpd.
KEXEC_LOAD = r"""
import ctypes, glob, os
SYS_kexec_file_load = 320
KEXEC_FILE_ON_CRASH = 0x2
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
kernel = sorted(glob.glob("/boot/vmlinuz-*"))[-1]
initrd = sorted(glob.glob("/boot/initrd.img-*"))[-1]
args = [a for a in open("/proc/cmdline").read().split() if not a.startswith("crashkernel=")]
cmdline = " ".join(args + ["irqpoll", "nr_cpus=1", "reset_devices"]).encode()
kfd, ifd = os.open(kernel, os.O_RDONLY), os.open(initrd, os.O_RDONLY)
rc = libc.syscall(ctypes.c_long(SYS_kexec_file_load), ctypes.c_long(kfd), ctypes.c_long(ifd),
                  ctypes.c_ulong(len(cmdline) + 1), ctypes.c_char_p(cmdline),
                  ctypes.c_ulong(KEXEC_FILE_ON_CRASH))
if rc != 0:
    err = ctypes.get_errno()
    raise SystemExit(f"kexec_file_load: {os.strerror(err)} (errno {err})")
"""


def test_reservation_bus_and_python(make_guest: GuestFactory) -> None:
    t0 = time.monotonic()
    g = make_guest(append="crashkernel=256M")
    boot_s = time.monotonic() - t0
    assert g.run("cat /sys/kernel/kexec_crash_size").stdout.strip() == str(256 << 20)
    assert "Crash kernel" in g.run("cat /proc/iomem").stdout
    assert "org.freedesktop.DBus" in g.run("busctl --system list").stdout
    g.run(["python3", "-c", "import pydbus, systemd.daemon, yaml"])
    # the harness itself: another user, exit codes, stdout/stderr, files both ways
    assert g.run("id -u", user="tester").stdout.strip() == "1000"
    r = g.run("echo out; echo err >&2; exit 7", check=False)
    assert (r.rc, r.stdout, r.stderr) == (7, "out\n", "err\n")
    blob = bytes(range(256)) * 2000  # > one transfer chunk
    g.write_file("/root/blob", blob, mode=0o600)
    assert g.read_file("/root/blob") == blob
    assert g.run("stat -c %a /root/blob").stdout.strip() == "600"
    g.kill()  # frees the host CPU for the next guest

    t1 = time.monotonic()
    plain = make_guest()
    plain_boot_s = time.monotonic() - t1
    assert plain.run("cat /sys/kernel/kexec_crash_size").stdout.strip() == "0"
    assert "Crash kernel" not in plain.run("cat /proc/iomem").stdout
    plain.write_file("/root/marker", b"written in the guest\n")
    t2 = time.monotonic()
    plain.shutdown()
    shutdown_s = time.monotonic() - t2
    t3 = time.monotonic()
    assert "marker" in plain.debugfs_ls("/root")
    assert plain.debugfs_cat("/root/marker") == b"written in the guest\n"
    disk_s = time.monotonic() - t3
    print(
        f"\ntimings: boot with crashkernel {boot_s:.1f}s, boot without {plain_boot_s:.1f}s, "
        f"shutdown {shutdown_s:.1f}s, raw disk + debugfs {disk_s:.1f}s"
    )


def test_crash_kernel_boots(make_guest: GuestFactory) -> None:
    t0 = time.monotonic()
    g = make_guest(append="crashkernel=256M")
    boot_s = time.monotonic() - t0
    g.write_file("/root/kexec_load.py", KEXEC_LOAD.encode())
    t1 = time.monotonic()
    g.run(["python3", "/root/kexec_load.py"])
    load_s = time.monotonic() - t1
    assert g.run("cat /sys/kernel/kexec_crash_loaded").stdout.strip() == "1"
    t2 = time.monotonic()
    offset = g.crash()
    g.wait_console(r"Kernel panic - not syncing: sysrq triggered crash", 120, offset)
    panic_s = time.monotonic() - t2
    # up to the newline: the console log may hold half a line when it is read
    line = g.wait_console(r"Command line: .*elfcorehdr=.*\n", 300, offset).group(0).strip()
    crash_kernel_s = time.monotonic() - t2
    assert "crashkernel=" not in line and "reset_devices" in line
    print(f"\ncrash kernel: {line}")
    print(
        f"timings: boot {boot_s:.1f}s, kexec_file_load {load_s:.1f}s, sysrq to panic "
        f"{panic_s:.1f}s, sysrq to crash kernel command line {crash_kernel_s:.1f}s"
    )
