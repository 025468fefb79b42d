"""/init of the capture initramfs (kdumpd/environment.py builds it): PID 1 in the crash
kernel. It mounts what the kernel does not, loads the modules of the dump device chain,
activates LVM, mounts the dump file system by UUID, runs the capture, and reboots.

The only code that runs as PID 1: it must never return (the kernel would panic), so every
failure ends in the configured failure action. The system calls are libc's, through
ctypes; finit_module has no libc wrapper and goes through syscall(2).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from kdumpd import capture, config

SETTINGS = Path("/etc/kdumpd/capture.json")
TARGET = Path("/target")
FINIT_MODULE = {"x86_64": 313, "aarch64": 273, "riscv64": 273, "s390x": 344, "ppc64le": 353}
MODULE_INIT_COMPRESSED_FILE = 4  # a .ko.zst: the kernel decompresses it (6.4 and later)
# reboot(2) commands (linux/reboot.h)
REBOOT = {"reboot": 0x01234567, "poweroff": 0x4321FEDC, "halt": 0xCDEF0123}
DEVICE_TIMEOUT_S = 60.0
LVM_CONFIG = (
    "devices { obtain_device_list_from_udev = 0 } "
    "activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }"
)

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str, options: str = "") -> None:
    _check(
        _libc.mount(source.encode(), target.encode(), fstype.encode(), 0, options.encode()),
        f"mount {source} on {target} ({fstype})",
    )


def load_module(path: str) -> None:
    flags = MODULE_INIT_COMPRESSED_FILE if path.endswith(".zst") else 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        number = FINIT_MODULE[os.uname().machine]
        if _libc.syscall(number, fd, b"", flags) != 0:
            err = ctypes.get_errno()
            if err != 17:  # EEXIST: built in, or loaded as a dependency already
                capture.say(f"loading {Path(path).name} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def find_device(target: dict[str, Any], programs: dict[str, str]) -> str:
    """The device with the dump file system's UUID, once the drivers have found it."""
    deadline = time.monotonic() + DEVICE_TIMEOUT_S
    uuid = target["uuid"]
    while True:
        for vg in target["volume_groups"]:
            subprocess.run(
                [programs["lvm"], "vgchange", "-ay", "--sysinit", "--nolocking",
                 "--config", LVM_CONFIG, vg],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        found = subprocess.run(
            [programs["blkid"], "-c", "/dev/null", "-o", "device", "-t", f"UUID={uuid}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise capture.CaptureError(
                f"no device with the dump file system (UUID {uuid}) appeared "
                f"within {DEVICE_TIMEOUT_S:.0f} s"
            )
        time.sleep(0.2)  # devices appear as their drivers probe; poll for them


def capture_config(settings: dict[str, Any]) -> config.Config:
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in settings["capture"].items()
    }
    dump_path = TARGET / settings["target"]["subdir"]
    return config.Config(path=SETTINGS, dump_path=dump_path, **values)


def run(settings: dict[str, Any]) -> bool:
    started = time.monotonic()
    target = settings["target"]
    for path in settings["modules"]:
        load_module(path)
    device = find_device(target, settings["programs"])
    mount(device, str(TARGET), target["fstype"], target["options"])
    capture.say(
        f"capture environment up in {time.monotonic() - started:.1f} s: "
        f"{device} mounted on {TARGET}"
    )
    return capture.save(capture_config(settings))


def finish(action: str, programs: dict[str, str]) -> None:
    if action == "shell" and "sh" in programs:
        capture.say("starting a shell; leaving it reboots")
        subprocess.run([programs["sh"]])
        action = "reboot"
    os.sync()
    _libc.umount2(str(TARGET).encode(), 0)
    _libc.reboot(REBOOT.get(action, REBOOT["reboot"]))


def _config(settings: dict[str, Any]) -> config.Config:
    return capture_config(settings) if settings else config.Config()


def main() -> None:
    settings: dict[str, Any] = {}
    ok = False
    try:
        mount("proc", "/proc", "proc")
        mount("sysfs", "/sys", "sysfs")
        mount("devtmpfs", "/dev", "devtmpfs")
        settings = json.loads(SETTINGS.read_text())
        ok = run(settings)
    except BaseException as e:  # PID 1: whatever happens, end in the failure action
        capture.say(f"capture FAILED: {e}")
        capture.say(f"capture failed; {capture.action_after(_config(settings), False)}")
    finish(capture.action_after(_config(settings), ok), settings.get("programs", {}))
    while True:  # reboot(2) does not return; PID 1 must not exit if it somehow did
        time.sleep(3600)
