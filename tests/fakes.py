"""A fake machine for logic tests: a sysroot tree and a kexec whose kernel is a file.

The real syscall is exercised in the VM tests; this fake mimics the kernel's rules that the
daemon depends on: a crash load first frees the loaded image, and garbage is refused.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

from kdumpd import config, cpio, environment
from kdumpd.loader import KEXEC_FILE_ON_CRASH, KEXEC_FILE_UNLOAD, Kexec, KexecError
from kdumpd.service import Daemon
from tests.bzimage import SIGNATURE, bzimage, xz

GIB = 1 << 30
MIB = 1 << 20
KERNEL = bzimage(xz())
INITRD = b"\x1f\x8b fake initrd " * 4096
V = "6.1.0-28-amd64"  # the running kernel in a fake machine


def make_sysroot(
    root: Path,
    cmdline: str = "root=/dev/vda rw console=ttyS0 crashkernel=256M",
    reserved: int = 256 * MIB,
    ram: int = 1 * GIB,
    versions: tuple[str, ...] = ("6.1.0-28-amd64",),
    running: str = "6.1.0-28-amd64",
) -> Path:
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "sys/kernel").mkdir(parents=True, exist_ok=True)
    (root / "boot").mkdir(exist_ok=True)
    (root / "proc/cmdline").write_text(f"BOOT_IMAGE=/boot/vmlinuz-{running} {cmdline}\n")
    (root / "proc/sys/kernel/random").mkdir(parents=True, exist_ok=True)
    (root / "proc/sys/kernel/random/boot_id").write_text("2b3c5d21-7a4f-4c0e-9a77-0d1f1b6e9c42\n")
    (root / "proc/meminfo").write_text(f"MemTotal:       {(ram - 64 * MIB) // 1024} kB\n")
    crash = f"    2f000000-{0x2F000000 + reserved - 1:08x} : Crash kernel\n" if reserved else ""
    (root / "proc/iomem").write_text(
        "00000000-00000fff : Reserved\n"
        f"00100000-{ram - 1:08x} : System RAM\n"
        "  01000000-01ffffff : Kernel code\n" + crash
    )
    (root / "sys/kernel/kexec_crash_size").write_text(f"{reserved}\n")
    (root / "sys/kernel/kexec_crash_loaded").write_text("0\n")
    for v in versions:
        (root / f"boot/vmlinuz-{v}").write_bytes(KERNEL)
        (root / f"boot/initrd.img-{v}").write_bytes(INITRD)
    return root


class FakeKexec(Kexec):
    """Kexec whose syscall is simulated against the sysroot's kexec_crash_loaded."""

    def __init__(self, sysroot: Path) -> None:
        super().__init__(sysroot, machine="x86_64")
        self.calls: list[str] = []
        self.loaded_kernel = b""

    def _set_loaded(self, loaded: bool) -> None:
        (self.sysroot / "sys/kernel/kexec_crash_loaded").write_text("1\n" if loaded else "0\n")

    def _call(
        self, what: str, kernel_fd: int, initrd_fd: int, cmdline: bytes | None, flags: int
    ) -> None:
        with (self.sysroot / "fake-syscalls").open("a") as log:  # for tests in another process
            log.write(f"flags {flags:#x}\n")
        slow = self.sysroot / "fake-load-seconds"  # a test's way to make the syscall slow
        if slow.exists():
            time.sleep(float(slow.read_text()))
        if flags & KEXEC_FILE_UNLOAD:
            self.calls.append("unload")
            self._set_loaded(False)
            return
        assert flags & KEXEC_FILE_ON_CRASH
        assert cmdline is not None and cmdline.endswith(b"\0")
        # As in kernel/kexec_file.c: the loaded crash image is freed before the new one is read.
        self._set_loaded(False)
        kernel = os.pread(kernel_fd, 1 << 20, 0)
        initrd = os.pread(initrd_fd, 1 << 20, 0) if initrd_fd >= 0 else b""
        self.calls.append(f"load {len(kernel)} {len(initrd)}")
        reserved = int((self.sysroot / "sys/kernel/kexec_crash_size").read_text())
        # bzImage64_probe: a boot header, and a kernel that runs in 64-bit mode.
        if kernel[0x202:0x206] != b"HdrS" or not kernel[0x236] & 0x1:
            raise KexecError(errno.ENOEXEC, what)
        if kernel.endswith(SIGNATURE):  # signed, but not by a key it trusts (KEXEC_SIG_FORCE)
            raise KexecError(errno.EKEYREJECTED, what)
        if reserved < len(kernel) + len(initrd):
            raise KexecError(errno.EADDRNOTAVAIL, what)
        self.loaded_kernel = kernel
        self._set_loaded(True)


TARGET = environment.Target(
    uuid="0f3c1e2a-5b6d-4c7e-8f90-123456789abc",
    fstype="ext4",
    options="",
    subdir="var/crash",
    volume_groups=(),
    devices=("vda",),
    modules=frozenset({"ext4", "virtio_blk"}),
)


def fake_plan(cfg: config.Config, version: str, sysroot: Path) -> environment.Plan:
    """A capture initramfs of one file (the real one: test_environment), sending the dump
    the way the real planner would."""
    route, _ = environment.sending(cfg, sysroot)
    return environment.Plan(TARGET, {"init": cpio.regular(b"#!/bin/sh\n", 0o755)}, route=route)


def unreachable(cfg: config.Config, version: str, sysroot: Path) -> environment.Plan:
    raise environment.Unreachable(f"{cfg.dump_path} is on a network file system")


class Machine:
    """system=True: the capture initramfs cannot reach the dump path, the machine's own
    initrd is loaded every time."""

    def __init__(
        self, tmp_path: Path, system: bool = False, fresh: bool = True, **sysroot: Any
    ) -> None:
        self.tmp_path, self.system = tmp_path, system
        self.root = make_sysroot(tmp_path / "root", **sysroot) if fresh else tmp_path / "root"
        self.config = tmp_path / "kdumpd.yaml"
        if fresh:
            self.config.write_text("")
        self.kexec = FakeKexec(self.root)
        self.changes: list[dict[str, Any]] = []
        self.cache = tmp_path / "cache"
        self.daemon = Daemon(
            self.config,
            self.kexec,
            self.root,
            self.changes.append,
            cache=self.cache,
            planner=unreachable if system else fake_plan,
        )

    @classmethod
    def restarted(cls, m: Machine) -> Machine:
        """A new daemon on the same machine, as systemd starts it again: what the kernel
        holds and /run stay, the daemon's memory is gone."""
        return cls(m.tmp_path, m.system, fresh=False)

    def kernel_says_loaded(self) -> bool:
        return (self.root / "sys/kernel/kexec_crash_loaded").read_text().strip() == "1"
