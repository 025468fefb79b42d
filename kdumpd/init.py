"""Stage two of the capture in the crash kernel: PID 1, run by the machine's own Python
from its root file system, which stage one (the capture initramfs's /init, written by
kdumpd/environment.py) has mounted. It mounts the dump file system by UUID when it is
not the root's (loading its drivers, activating LVM), brings up the way to the target
when the dump is sent there (kdumpd/network.py) and mounts an NFS export, runs the
capture, and reboots.

It must never return (the kernel would panic), so every failure ends in the configured
failure action. The system calls are libc's, through ctypes; finit_module has no libc
wrapper and goes through syscall(2).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import lzma
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from kdumpd import capture, config, crashtest, network, remote, target

SETTINGS = Path("/run/kdumpd/capture.json")  # stage one copies it here from the archive
TARGET = Path("/run/kdumpd/target")  # where the dump file system is mounted
FINIT_MODULE = {"x86_64": 313, "aarch64": 273, "riscv64": 273, "s390x": 344, "ppc64le": 353}
MODULE_INIT_COMPRESSED_FILE = 4  # a .ko.zst: the kernel decompresses it (6.4 and later)
EEXIST = 17  # a module that is built in, or loaded already (stage one loads the root's)
# reboot(2) commands (linux/reboot.h)
REBOOT = {"reboot": 0x01234567, "poweroff": 0x4321FEDC, "halt": 0xCDEF0123}
DEVICE_TIMEOUT_S = 60.0
NFS_MOUNT = Path("/run/kdumpd/nfs")
# Tried in this order, the next only when the server does not speak one (as mount.nfs
# negotiates); each try ends within NFS_TIMEOUT_S whatever the network does.
NFS_VERSIONS = ("4.2", "4.1", "4.0", "3")
NFS_TIMEOUT_S = 60.0
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
    if path.endswith(".xz"):  # the kernel unpacks xz from 6.4 on only: hand it the module
        data = lzma.decompress(Path(path).read_bytes())
        result = _libc.init_module(data, ctypes.c_ulong(len(data)), b"")
    else:
        flags = MODULE_INIT_COMPRESSED_FILE if path.endswith(".zst") else 0
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            result = _libc.syscall(FINIT_MODULE[os.uname().machine], fd, b"", flags)
        finally:
            os.close(fd)
    if result != 0 and (err := ctypes.get_errno()) != EEXIST:
        capture.say(f"loading {Path(path).name} failed: {os.strerror(err)}")


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
    target = settings["target"]
    dump_path = TARGET / target["subdir"] if target else Path(settings["dump_path"])
    return config.Config(path=SETTINGS, dump_path=dump_path, **values)


def _uptime() -> str:
    return Path("/proc/uptime").read_text().split()[0]


def bring_up(route: network.Route, busybox: str) -> None:
    """The interface that led to the target before the crash, configured as it was."""
    network.wait(
        f"no interface with MAC {route.mac} appeared",
        lambda: network.interface_with(route.mac) is not None,
        DEVICE_TIMEOUT_S,
    )
    interface = network.interface_with(route.mac)
    assert interface is not None  # it appeared, and a NIC stays once its driver made it
    for step in network.commands(route, interface):
        done = subprocess.run([busybox, "ip", *step], capture_output=True, text=True)
        if done.returncode != 0:
            raise capture.CaptureError(f"ip {' '.join(step)}: {done.stderr.strip()}")
    network.wait(f"{interface} has no link", lambda: network.carrier(interface),
                 network.CARRIER_TIMEOUT_S)  # fmt: skip
    capture.say(f"{interface} up as {route.address}, for {route.host} after {_uptime()} s")


def nfs_options(version: str, route: network.Route) -> str:
    """What mount.nfs would hand the kernel, with the addresses found before the crash (no
    DNS here, and no rpc.statd: NFSv3 without locks). soft: a server that goes away fails
    the capture (EIO after about 30 s per request over TCP: timeo, then timeo per retrans)
    instead of hanging it."""
    common = f"addr={route.host},proto=tcp,soft,timeo=100,retrans=2"
    if version == "3":
        return f"vers=3,{common},mountproto=tcp,nolock"
    return f"vers={version},{common},clientaddr={route.address}"


# mount(2)'s answers that mean "not this version" (as mount.nfs's nfs_autonegotiate takes
# them): the next one is tried; any other ends the tries.
NOT_THIS_VERSION = {errno.EPROTONOSUPPORT, errno.EINVAL, errno.ENOENT, errno.EPERM}
GAVE_NO_ANSWER = 255  # _bounded's: the child failed without an errno, or would not die
KILLED_WAIT_S = 5.0


def _bounded(call: Any, timeout: float) -> int:
    """call() in a child process, killed after `timeout` (an NFS mount may wait long on a
    server that does not answer): its errno, 0 when it worked, ETIMEDOUT when it was
    killed. The child shares this process's mounts, so what it mounted stays. PID 1 never
    waits for ever: a child that does not die is left behind."""
    pid = os.fork()
    if pid == 0:
        try:
            call()
            os._exit(0)
        except OSError as e:
            os._exit(e.errno or GAVE_NO_ANSWER)
        except BaseException:
            os._exit(GAVE_NO_ANSWER)
    deadline, killed = time.monotonic() + timeout, False
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            if killed:
                return errno.ETIMEDOUT  # still not dead: left behind
            os.kill(pid, 9)  # its RPC waits are killable
            deadline, killed = time.monotonic() + KILLED_WAIT_S, True
        time.sleep(0.1)
    return errno.ETIMEDOUT if killed else os.waitstatus_to_exitcode(done[1])


def _mount_failure(err: int) -> str:
    if err == errno.ETIMEDOUT:
        return f"no answer within {NFS_TIMEOUT_S:.0f} s"
    return os.strerror(err) if err != GAVE_NO_ANSWER else "the mount failed and said nothing"


# sethostname(2)'s limit (HOST_NAME_MAX): the machine's folder name may be longer.
HOST_NAME_MAX = 64


def mount_export(nfs: remote.Nfs, route: network.Route) -> None:
    """The export at nfs.mountpoint, by the kernel's own NFS client (no mount.nfs)."""
    # The NFSv4 client's identity carries the node name: every crashed machine's would be
    # "(none)", and the server would take one for another. Best effort: not worth a dump.
    with contextlib.suppress(OSError):
        socket.sethostname(nfs.machine[:HOST_NAME_MAX])
    source = f"{route.host}:{nfs.target.path}"
    try:
        nfs.mountpoint.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise remote.SendError(f"cannot make {nfs.mountpoint}: {e.strerror}") from None
    for version in NFS_VERSIONS:
        options = nfs_options(version, route)
        err = _bounded(functools.partial(mount, source, str(nfs.mountpoint), "nfs", options),
                       NFS_TIMEOUT_S)  # fmt: skip
        if err == 0:
            capture.say(f"{source} mounted (NFS {version}) after {_uptime()} s")
            return
        if err not in NOT_THIS_VERSION:
            break
    why = _mount_failure(err)
    raise remote.SendError(f"{nfs.name}: cannot mount {nfs.target.path}: {why}")


def sender(send: dict[str, Any], programs: dict[str, str]) -> tuple[remote.Sender, network.Route]:
    route = network.Route.from_json(send["route"])
    t = target.parse(send["url"])
    if isinstance(t, target.NfsTarget):
        return remote.Nfs(t, route.host, send["machine"], NFS_MOUNT), route
    key, known = Path(send["key"]), Path(send["known_hosts"])
    return remote.Ssh(t, route.host, key, known, send["machine"], programs["ssh"]), route


def network_up(send: remote.Sender, route: network.Route, busybox: str) -> None:
    bring_up(route, busybox)
    if isinstance(send, remote.Nfs):
        mount_export(send, route)


def run(settings: dict[str, Any]) -> bool:
    dump = settings["target"]
    for path in settings["modules"]:
        load_module(path)
    if dump:
        device = find_device(dump, settings["programs"])
        TARGET.mkdir(parents=True, exist_ok=True)
        mount(device, str(TARGET), dump["fstype"], dump["options"])
        capture.say(f"{device} mounted on {TARGET}")
    capture.say(f"capture environment up after {_uptime()} s")
    if not settings.get("send"):
        return capture.save(capture_config(settings))
    send, route = sender(settings["send"], settings["programs"])
    # Brought up by the capture, so that a network that fails is in the dump's record.
    busybox = settings["programs"]["busybox"]
    return capture.save(capture_config(settings), send, lambda: network_up(send, route, busybox))


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
        settings = json.loads(SETTINGS.read_text())
        ok = run(settings)
    except BaseException as e:  # PID 1: whatever happens, end in the failure action
        capture.say(f"capture FAILED: {e}")
        crashtest.capture_record(Path("/"), False, str(e), None)  # for kdumpd test
        capture.say(f"capture failed; {capture.action_after(_config(settings), False)}")
    finish(capture.action_after(_config(settings), ok), settings.get("programs", {}))
    while True:  # reboot(2) does not return; PID 1 must not exit if it somehow did
        time.sleep(3600)
