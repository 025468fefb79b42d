"""The capture initramfs: a small archive kdumpd assembles from this machine's own files,
so that the crash kernel saves the dump without booting the machine's initramfs and
systemd.

Capture runs in two stages. The archive holds only busybox, the kernel modules for the
root file system's device chain (from sysfs, closed over modules.dep and modules.softdep
of the crash kernel's version), lvm when the root is on LVM, and the capture settings.
Its /init, a busybox script, mounts the root file system by UUID and switches to it,
which frees the archive. Stage two is `kdumpd.init`, run by the machine's own Python
from the root file system: it mounts the dump file system (loading its drivers from the
root's /lib/modules) and runs the same capture code as the machine's own boot would.
Python, its libraries and makedumpfile are read from the disk into the page cache, which
the kernel can reclaim, not held in the archive's unreclaimable memory: the crash kernel
needs a smaller reservation (README, "Memory").

Everything here reads a sysroot; nothing changes the system but the cache directory.
Where the root or the dump file system cannot be reached this way (network, encryption,
RAID, loop files, ...), `plan` raises Unreachable with the reason, and the daemon arms
the machine's own initramfs and systemd instead (capture mode "system").
"""

from __future__ import annotations

import dataclasses
import functools
import json
import lzma
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdumpd import capture, config, cpio, digests, elf, init, network, safefile, target

CACHE_DIR = Path("/var/cache/kdumpd")
IMAGE_PREFIX = "initramfs-"
SETTINGS = "etc/kdumpd/capture.json"  # in the archive; stage one copies it to init.SETTINGS
NEW_ROOT = "/root"  # where stage one mounts the root file system
FILESYSTEMS = ("ext4", "ext3", "ext2", "xfs", "btrfs")
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "9p", "fuse.sshfs")
# btrfs: mount the top-level subvolume; the dump path below it includes the subvolume.
MOUNT_OPTIONS = {"btrfs": "subvolid=5"}
# Config keys the capture itself reads; the rest is the daemon's.
CAPTURE_KEYS = (
    "dump_level",
    "compression",
    "makedumpfile_args",
    "min_free_space",
    "keep_dumps",
    "final_action",
    "failure_action",
)
SBIN_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
# xz, as the kernel's decompressor wants it (CRC32, scripts/xz_wrap.sh): a fifth smaller
# than gzip, and the compressed image sits in the reservation until it is unpacked. A
# 1 MiB dictionary, which the kernel allocates while it unpacks; preset 1 compresses about
# as small as 6 at a third of the time.
XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 1, "dict_size": 1 << 20}]


class Unreachable(Exception):
    """The capture initramfs cannot reach the dump path (or cannot be assembled here)."""


@dataclass(frozen=True)
class Target:
    """The dump file system, as /init finds and mounts it."""

    uuid: str
    fstype: str
    options: str
    subdir: str  # the dump path inside the file system, from its top
    volume_groups: tuple[str, ...]  # LVM volume groups to activate first
    devices: tuple[str, ...]  # the block devices on the way, for messages
    modules: frozenset[str]  # drivers of the device chain and the file system


@dataclass
class Mount:
    point: str
    root: str  # the mount's root inside its file system (a subvolume, a bind mount)
    fstype: str
    source: str
    major: int
    minor: int


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        major, _, minor = fields[2].partition(":")
        mounts.append(
            Mount(_unescape(fields[4]), _unescape(fields[3]), tail[0], _unescape(tail[1]),
                  int(major), int(minor))
        )  # fmt: skip
    return mounts


def mount_of(path: Path, mounts: list[Mount]) -> Mount:
    """The mount a path is on: the longest mount point above it, the last one mounted."""
    best: Mount | None = None
    for m in mounts:
        point = Path(m.point)
        if (point == path or point in path.parents) and (
            best is None or len(m.point) >= len(best.point)
        ):
            best = m
    if best is None:
        raise Unreachable(f"{path} is on no mounted file system")
    return best


def udev_properties(sysroot: Path, major: int, minor: int) -> dict[str, str]:
    """udev's record of a block device (/run/udev/data/bMAJ:MIN): its E: lines."""
    try:
        text = (sysroot / f"run/udev/data/b{major}:{minor}").read_text()
    except OSError:
        return {}
    pairs = (line[2:].partition("=") for line in text.splitlines() if line.startswith("E:"))
    return {key: value for key, sep, value in pairs if sep}


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _numbers(block: Path) -> tuple[int, int]:
    """A block device's major and minor number, from sysfs."""
    major, sep, minor = _read(block / "dev").partition(":")
    if not (sep and major.isdigit() and minor.isdigit()):
        raise Unreachable(f"{block.name} has no device number in sysfs")
    return int(major), int(minor)


def _block_dir(sysroot: Path, mount: Mount) -> Path:
    """/sys/class/block/NAME of the mount's device. btrfs reports an anonymous device
    number (0:N), so its source's name is looked up instead."""
    if mount.major:
        link = sysroot / f"sys/dev/block/{mount.major}:{mount.minor}"
        if link.exists():
            return link.resolve()
    name = Path(mount.source).name
    block = sysroot / "sys/class/block" / name
    if block.exists():
        return block.resolve()
    for dm in sorted((sysroot / "sys/class/block").glob("dm-*")):
        if _read(dm / "dm/name") == name:
            return dm.resolve()
    raise Unreachable(f"{mount.source} ({mount.fstype} on {mount.point}) is not a block device")


_VIRTUAL_KINDS = {
    "loop": "a loop device (a file on another file system)",
    "md": "software RAID (md)",
    "nbd": "a network block device",
    "rbd": "a Ceph network block device",
    "drbd": "a DRBD replicated device",
    "zram": "a compressed RAM disk",
}
_DM_KINDS = {"CRYPT": "encrypted (dm-crypt/LUKS)", "mpath": "multipath", "part": "a partition"}


def _chain(sysroot: Path, block: Path, found: dict[str, set[str]]) -> None:
    """Walk from a block device down to the disks: drivers on the way, LVM groups."""
    name = block.name
    found["devices"].add(name)
    if (block / "dm").is_dir():
        uuid = _read(block / "dm/uuid")
        if not uuid.startswith("LVM-"):
            kind = _DM_KINDS.get(uuid.split("-", 1)[0], "a device-mapper device (not LVM)")
            raise Unreachable(f"{name} ({_read(block / 'dm/name')}) is {kind}")
        vg = udev_properties(sysroot, *_numbers(block)).get("DM_VG_NAME", "")
        if not vg:
            raise Unreachable(f"udev has no volume group name for {name}")
        found["volume_groups"].add(vg)
        found["modules"].add("dm_mod")
        # The LV's targets (thin, raid, cache, ...) are loaded now, as it is in use.
        for module in (sysroot / "sys/module").glob("dm_*"):
            found["modules"].add(module.name)
        for slave in sorted((block / "slaves").glob("*")):
            _chain(sysroot, slave.resolve(), found)
        return
    disk = block.parent if (block / "partition").exists() else block
    if "/devices/virtual/" in str(disk):
        kind = next((v for k, v in _VIRTUAL_KINDS.items() if disk.name.startswith(k)), "")
        raise Unreachable(f"{disk.name} is {kind or 'a virtual block device'}")
    for ancestor in [disk, *disk.parents]:
        if ancestor == sysroot / "sys/devices":
            break
        if re.fullmatch(r"session\d+", ancestor.name):
            raise Unreachable(f"{disk.name} is an iSCSI disk (it needs the network)")
        module = ancestor / "driver/module"
        if module.exists():
            found["modules"].add(module.resolve().name)


def _fstab_unmounted(sysroot: Path, dump_path: Path, mounts: list[Mount]) -> list[str]:
    try:
        fstab = (sysroot / "etc/fstab").read_text()
    except OSError:
        return []
    return capture.mounts_needed(dump_path, fstab, {m.point for m in mounts})


def find_target(sysroot: Path, dump_path: Path) -> Target:
    """Where the dump goes, as the capture initramfs can find it; Unreachable if it cannot."""
    inside = Path(resolve(sysroot, str(dump_path))[0])
    mounts = parse_mountinfo((sysroot / "proc/self/mountinfo").read_text())
    if missing := _fstab_unmounted(sysroot, inside, mounts):
        raise Unreachable(f"{missing[0]} (in /etc/fstab, holding {dump_path}) is not mounted now")
    mount = mount_of(inside, mounts)
    where = f"{dump_path} is on {mount.source} ({mount.fstype}, mounted on {mount.point})"
    if mount.fstype in NETWORK_FILESYSTEMS:
        raise Unreachable(f"{where}: a network file system")
    if mount.fstype not in FILESYSTEMS:
        raise Unreachable(f"{where}: not one of {', '.join(FILESYSTEMS)}")
    block = _block_dir(sysroot, mount)
    found: dict[str, set[str]] = {"modules": set(), "volume_groups": set(), "devices": set()}
    try:
        _chain(sysroot, block, found)
    except Unreachable as e:
        raise Unreachable(f"{where}: {e}") from None
    uuid = udev_properties(sysroot, *_numbers(block)).get("ID_FS_UUID", "")
    if not uuid:
        raise Unreachable(f"{where}: udev has no file system UUID for {block.name}")
    below = inside.relative_to(mount.point)
    subdir = (Path(mount.root.lstrip("/")) / below).as_posix().strip(".").strip("/")
    return Target(
        uuid=uuid,
        fstype=mount.fstype,
        options=MOUNT_OPTIONS.get(mount.fstype, ""),
        subdir=subdir,
        volume_groups=tuple(sorted(found["volume_groups"])),
        devices=tuple(sorted(found["devices"])),
        modules=frozenset(found["modules"] | {mount.fstype}),
    )


def module_name(path: str) -> str:
    """kernel/drivers/md/dm-mod.ko.xz -> dm_mod (as modprobe normalises names)."""
    # String operations, not Path: modules.dep has thousands of lines, read at every load.
    return path.rpartition("/")[2].split(".ko", 1)[0].replace("-", "_")


@dataclass
class ModuleIndex:
    """One kernel version's modules.dep, modules.softdep, modules.alias, modules.builtin."""

    directory: Path
    deps: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # name: file, deps
    aliases: dict[str, list[str]] = field(default_factory=dict)
    softdeps: dict[str, list[str]] = field(default_factory=dict)  # pre: only
    builtin: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, directory: Path, sources: Sources) -> ModuleIndex:
        index = cls(directory)
        for name in ("modules.dep", "modules.alias", "modules.softdep", "modules.builtin"):
            sources.add(directory / name)
        try:
            dep = (directory / "modules.dep").read_text()
        except OSError as e:
            raise Unreachable(f"cannot read {directory / 'modules.dep'}: {e.strerror}") from None
        for line in dep.splitlines():
            path, _, deps = line.partition(":")
            index.deps[module_name(path)] = (path, deps.split())
        for line in _read(directory / "modules.alias").splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == "alias" and "*" not in words[1]:
                index.aliases.setdefault(words[1], []).append(words[2].replace("-", "_"))
        for line in _read(directory / "modules.softdep").splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "softdep":
                pre = words[2 : words.index("post:") if "post:" in words else None]
                index.softdeps[words[1].replace("-", "_")] = [w for w in pre if w != "pre:"]
        index.builtin = {module_name(p) for p in _read(directory / "modules.builtin").split()}
        return index

    def resolve(self, name: str) -> list[str]:
        """Module names for a name or an alias ("crypto-crc32c" -> its implementations)."""
        name = name.replace("-", "_")
        if name in self.deps or name in self.builtin:
            return [name]
        return [m for m in self.aliases.get(name, self.aliases.get(name.replace("_", "-"), []))]

    def load_order(self, names: set[str]) -> list[str]:
        """Module files (relative to the directory) to load, dependencies first."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen or name not in self.deps:
                return
            seen.add(name)
            for soft in self.softdeps.get(name, []):
                for m in self.resolve(soft):
                    visit(m)
            path, deps = self.deps[name]
            for dep in reversed(deps):
                visit(module_name(dep))
            order.append(path)

        for name in sorted(names):
            resolved = self.resolve(name)
            if not resolved:
                raise Unreachable(f"kernel {self.directory.name} has no module {name}")
            for m in resolved:
                visit(m)
        return order


def which(sysroot: Path, program: str) -> str:
    """Where a program is, as PATH would find it; Unreachable when it is not installed."""
    for d in SBIN_DIRS:
        if (sysroot / d.lstrip("/") / program).is_file():
            return f"{d}/{program}"
    raise Unreachable(f"{program} is not installed")


def resolve(sysroot: Path, path: str) -> tuple[str, list[tuple[str, str]]]:
    """Follow the symlinks in each component of an absolute path as if sysroot were /:
    the final path, and the symlinks met on the way (path, target)."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    links: list[tuple[str, str]] = []
    while parts:
        done.append(parts.pop(0))
        here = "/".join(done)
        host = sysroot / here
        if not host.is_symlink():
            continue
        if len(links) >= 40:  # as the kernel's ELOOP
            raise Unreachable(f"too many symlinks on the way to {path}")
        points_to = os.readlink(host)
        links.append((here, points_to))
        base = [] if points_to.startswith("/") else done[:-1]
        parts = [p for p in (base + points_to.split("/")) if p and p != "."] + parts
        done = []
        while ".." in parts:  # a/b/../c
            i = parts.index("..")
            parts = parts[: max(i - 1, 0)] + parts[i + 1 :]
    return "/" + "/".join(done), links


class Contents:
    """The archive's entries, taken from the sysroot with the symlinks on their way."""

    def __init__(self, sysroot: Path, sources: Sources) -> None:
        self.sysroot = sysroot
        self.sources = sources
        self.entries: dict[str, cpio.Entry] = {}
        # Each identity is taken before what it stands for is read: a change in between
        # is then seen at the next recall.
        conf = sysroot / "etc/ld.so.conf.d"
        for path in (sysroot / "etc/ld.so.conf", conf, *sorted(conf.glob("*"))):
            sources.add(path)  # where libraries are looked for
        self._library_dirs = elf.library_dirs(sysroot)

    def _directories(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/".join(parts[:i]), cpio.directory())

    def put(self, path: str, entry: cpio.Entry) -> None:
        path = path.lstrip("/")
        self._directories(path)
        self.entries[path] = entry

    def _real(self, path: str) -> str:
        """Path with the symlinks on its way followed; each of them is added."""
        real, links = resolve(self.sysroot, path)
        for link, points_to in links:
            self.sources.add(self.sysroot / link, follow=False)
            self.put(link, cpio.symlink(points_to))
        return real

    def file(self, path: str, data: bytes | None = None) -> bytes:
        """Add a file as it is on the sysroot, at the end of the symlinks on its way (the
        kernel unpacks in path order: a file put behind a symlink such as lib -> usr/lib
        could come before its directory). data: contents to put there instead."""
        real = self._real(path)
        host = self.sysroot / real.lstrip("/")
        if data is None:
            self.sources.add(host)
        try:
            content = host.read_bytes() if data is None else data
            perm = host.stat().st_mode & 0o7777 if data is None else 0o644
        except OSError as e:
            raise Unreachable(f"cannot read {real}: {e.strerror}") from None
        self.put(real, cpio.regular(content, perm))
        return content

    def program(self, path: str) -> None:
        """Add an ELF program or library with its interpreter and libraries."""
        if path.lstrip("/") in self.entries:
            return
        data = self.file(path)
        try:
            info = elf.dynamic(data)
        except elf.ElfError as e:
            raise Unreachable(f"{path}: {e}") from None
        if info is None:
            return
        if info.interpreter:
            self.program(info.interpreter)
        origin = str(Path(path).parent)
        dirs = [d.replace("$ORIGIN", origin) for d in info.search] + list(self._library_dirs)
        for d in dirs:  # a library added to a directory searched earlier changes the plan
            self.sources.add(self.sysroot / d.lstrip("/"))
        for lib in info.needed:
            found = next((d for d in dirs if (self.sysroot / d.lstrip("/") / lib).exists()), None)
            if found is None:
                raise Unreachable(f"{path} needs {lib}, which is not installed")
            self.program(f"{found}/{lib}")


def _modules(contents: Contents, index: ModuleIndex, names: set[str]) -> list[str]:
    """Put the modules for `names` into the archive; their paths there, in load order."""
    directory = f"/lib/modules/{index.directory.name}"
    placed = []
    for relative in index.load_order(names):
        path = f"{directory}/{relative}"
        if path.endswith(".zst"):
            raise Unreachable(f"{path} is zstd-compressed, which busybox insmod cannot load")
        if path.endswith(".xz"):  # unpacked here: the kernel unpacks modules from 6.4 on only
            host = contents.sysroot / path.lstrip("/")
            contents.sources.add(host)
            data = host.read_bytes()
            path = path[:-3]
            contents.file(path, lzma.decompress(data))
        else:
            contents.file(path)
        placed.append(path)
    return placed


def _identity(path: Path, follow: bool = True) -> tuple[int, ...]:
    try:
        return safefile.identity(os.stat(path, follow_symlinks=follow))
    except OSError:
        return ()


# The planning code's files as this process imported them: during a package upgrade the
# old daemon still plans with the old code while the new files are on disk.
_CODE = {m.__file__: list(_identity(Path(str(m.__file__)))) for m in (cpio, elf, init)}
_CODE[__file__] = list(_identity(Path(__file__)))


class Sources:
    """The files (and directories searched) a plan read, with their identity then."""

    def __init__(self) -> None:
        self.seen: dict[str, list[int]] = {}  # path: [follow symlinks?, identity...]

    def add(self, path: Path, follow: bool = True) -> None:
        self.seen[str(path)] = [int(follow), *_identity(path, follow)]


def _unchanged(seen: dict[str, list[int]]) -> bool:
    return all(
        tuple(record[1:]) == _identity(Path(path), bool(record[0])) for path, record in seen.items()
    )


@dataclass(frozen=True)
class Plan:
    """The archive's entries and what /init will do."""

    target: Target
    entries: dict[str, cpio.Entry]
    key: str = ""  # Intent.key; "" for a plan not made from a machine (tests' fakes)
    sources: dict[str, list[int]] = field(default_factory=dict)  # Sources.seen
    route: network.Route | None = None  # the dump is sent to the target this way

    @functools.cached_property
    def archive(self) -> bytes:
        return cpio.archive(self.entries)

    @functools.cached_property
    def file_name(self) -> str:
        """The image's file name: a hash of the archive, so the same content is one file."""
        return f"{IMAGE_PREFIX}{digests.sha256(self.archive).hexdigest()[:16]}.img"


def _root_options(root: Target) -> str:
    """Mount options for the root file system: its own btrfs subvolume, as it is now."""
    if root.fstype == "btrfs":
        return f"subvol=/{root.subdir}" if root.subdir else "subvolid=5"
    if root.subdir:
        raise Unreachable(f"the root file system is a bind mount of {root.subdir}")
    return ""


def _sh(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


# Stage one, /init of the archive. PID 1: every way out is switch_root or the failure
# action (a PID 1 that exits panics the kernel).
STAGE_ONE = """#!{busybox} sh
# kdumpd capture, stage one (written by kdumpd/environment.py): mount the root file
# system, then run the capture from it (kdumpd/init.py).
b={busybox}
say() {{ echo "kdumpd: $*"; }}
fail() {{
    say "capture FAILED: $*${{failed:+ (modules that did not load:$failed)}}"
    say "capture failed; {failure_action}"
    {failure}
    $b reboot -f
}}
$b mount -t proc proc /proc
$b mount -t sysfs sysfs /sys
$b mount -t devtmpfs devtmpfs /dev
failed=""  # the CPU's own variants of an algorithm may not load: only a failure tells
for m in {modules}; do
    $b insmod "$m" 2>/dev/null || failed="$failed ${{m##*/}}"
done
tries=0
until dev=$($b findfs UUID={uuid} 2>/dev/null); do
    {activate}
    tries=$((tries + 1))
    [ $tries -lt {tries} ] || fail "no root file system (UUID {uuid}) within {timeout} s"
    $b usleep 200000
done
$b mount -t {fstype} {options} "$dev" {new_root} || fail "cannot mount the root file system ($dev)"
$b mount -t tmpfs -o mode=0755 tmpfs {new_root}/run || fail "cannot mount {new_root}/run"
$b mkdir -p {new_root}{settings_dir}
$b cp /{settings} {new_root}{settings_file} || fail "cannot copy the settings"
say "root file system $dev mounted after $($b cut -d' ' -f1 /proc/uptime) s"
for d in proc sys dev; do
    $b mount --move /$d {new_root}/$d || fail "cannot move /$d"
done
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
exec $b switch_root {new_root} {python} -I -c "from kdumpd import init; init.main()"
"""

_FAILURE = {"reboot": "", "poweroff": "$b poweroff -f", "halt": "$b halt -f", "shell": "$b sh"}


def _stage_one(busybox: str, lvm: str, root: Target, modules: list[str], cfg: config.Config,
               python: str) -> str:  # fmt: skip
    vgchange = [lvm, "vgchange", "-ay", "--sysinit", "--nolocking", "--config", init.LVM_CONFIG]
    activate = _sh([*vgchange, *root.volume_groups]) + " >/dev/null 2>&1" if lvm else ":"
    tries = int(init.DEVICE_TIMEOUT_S / 0.2)
    return STAGE_ONE.format(
        busybox=busybox,
        failure_action=cfg.failure_action,
        failure=_FAILURE[cfg.failure_action],
        modules=_sh(modules) or '""',
        uuid=shlex.quote(root.uuid),
        activate=activate,
        tries=tries,
        timeout=f"{init.DEVICE_TIMEOUT_S:.0f}",
        fstype=shlex.quote(root.fstype),
        options=_sh(["-o", opts]) if (opts := _root_options(root)) else "",
        new_root=NEW_ROOT,
        settings=SETTINGS,
        settings_dir=init.SETTINGS.parent,
        settings_file=init.SETTINGS,
        python=shlex.quote(python),
    )


def _send_settings(it: Intent) -> dict[str, object] | None:
    """What stage two needs to send the dump (remote.Ssh's or Nfs's fields, the route)."""
    t = it.cfg.target
    if it.route is None or t is None:
        return None
    ssh = {"key": str(it.cfg.ssh_key), "known_hosts": str(target.KNOWN_HOSTS)}
    return {
        "url": t.url,
        **(ssh if isinstance(t, target.SshTarget) else {}),
        "machine": it.machine,
        "route": dataclasses.asdict(it.route),
    }


# The kernel's NFS client, mounting by itself in stage two (init.mount_export): the
# versions it tries, those this kernel has.
NFS_MODULES = ("nfsv4", "nfsv3")


def _sender_modules(it: Intent, index: ModuleIndex) -> set[str]:
    """The NIC's drivers, and for an NFS target the NFS client's modules."""
    if it.route is None:
        return set()
    if not isinstance(it.cfg.target, target.NfsTarget):
        return set(it.route.modules)
    nfs = {m for m in NFS_MODULES if index.resolve(m)}
    if not nfs:
        raise Unreachable(f"kernel {it.version} has no NFS client (modules {NFS_MODULES})")
    return set(it.route.modules) | nfs


def _target_settings(t: Target) -> dict[str, object]:
    return {
        "uuid": t.uuid,
        "fstype": t.fstype,
        "options": t.options,
        "subdir": t.subdir,
        "volume_groups": list(t.volume_groups),
    }


@dataclass(frozen=True)
class Intent:
    """What a plan is made from, besides the files it reads: found in the mount table, udev's
    data and the configuration, without reading any file's contents."""

    version: str
    python: str
    root: Target
    target: Target
    busybox: str
    lvm: str  # "" when no volume group is on the way
    programs: dict[str, str]  # what stage two runs, from the root file system
    cfg: config.Config
    route: network.Route | None  # the way to the target, when the dump is sent there
    machine: str  # the dump's folder on a target is named for it

    @property
    def key(self) -> str:
        """All of it, and the code that plans: a plan made from an equal key and unchanged
        files is the same archive."""
        fields = dataclasses.asdict(self)
        return json.dumps({**fields, "code": _CODE}, sort_keys=True, default=_json_default)


def _json_default(value: object) -> object:
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)


def sending(cfg: config.Config, sysroot: Path = Path("/")) -> tuple[network.Route | None, str]:
    """The way to the target when the capture initramfs sends the dump there, else None and
    why dumps are saved to dump_path instead ("" without a target). The route is the last
    check's (kdumpd-target-check.service's: the daemon has no network)."""
    t = cfg.target
    if t is None:
        return None, ""
    if isinstance(t, target.SshTarget):
        if config.ssh_key_problem(cfg):
            return None, f"its key {cfg.ssh_key} cannot be used"
        try:
            which(sysroot, "ssh")
        except Unreachable:
            return None, "ssh is not installed (Debian: openssh-client)"
    verdict = target.recall(sysroot / target.RUN_DIR / target.VERDICT, t, None)
    if verdict is None:
        return None, f"the way to {t.host} is known once kdumpd-target-check.service checked it"
    if verdict.route is None:
        return None, f"no way to {t.host} was found: {verdict.no_route}"
    return verdict.route, ""


NO_NETWORK_IN_SYSTEM = (
    "capture boots the system's own initramfs and systemd (capture mode system), where "
    "kdumpd brings up no network"
)
_NAME = re.compile(r"[^A-Za-z0-9.-]")


def machine_name(sysroot: Path = Path("/")) -> str:
    """hostname-<8 of the machine-id>: a fleet's dumps on one target never collide."""
    host = _read(sysroot / "etc/hostname").split(".")[0] or os.uname().nodename.split(".")[0]
    return f"{_NAME.sub('_', host) or 'localhost'}-{_read(sysroot / 'etc/machine-id')[:8]}"


def intent(cfg: config.Config, version: str, sysroot: Path = Path("/"), python: str = "") -> Intent:
    python = python or sys.executable  # /usr/bin/python3, not the version it points to now
    root = find_target(sysroot, Path("/"))
    dump = find_target(sysroot, cfg.dump_path)
    if not (sysroot / python.lstrip("/")).is_file():
        raise Unreachable(f"{python} is not installed")
    lvm = which(sysroot, "lvm") if root.volume_groups or dump.volume_groups else ""
    programs = {p: which(sysroot, p) for p in ("makedumpfile", "blkid")}
    if lvm:
        programs["lvm"] = lvm
    if cfg.failure_action == "shell":
        programs["sh"] = which(sysroot, "sh")
    busybox = which(sysroot, "busybox")
    route, _ = sending(cfg, sysroot)
    if route:
        programs["busybox"] = busybox
        if isinstance(cfg.target, target.SshTarget):
            programs["ssh"] = which(sysroot, "ssh")
    machine = machine_name(sysroot) if route else ""
    return Intent(version, python, root, dump, busybox, lvm, programs, cfg, route, machine)


def plan(cfg: config.Config, version: str, sysroot: Path = Path("/"), python: str = "") -> Plan:
    """What the capture initramfs for kernel `version` holds, or Unreachable."""
    it = intent(cfg, version, sysroot, python)
    root, dump = it.root, it.target
    sources = Sources()
    contents = Contents(sysroot, sources)
    for directory in ("dev", "proc", "sys", NEW_ROOT.lstrip("/")):
        contents.put(directory, cpio.directory())
    contents.put("dev/console", cpio.char_device(5, 1))
    contents.program(it.busybox)
    if root.volume_groups:
        contents.program(it.lvm)
    index = ModuleIndex.read(sysroot / f"lib/modules/{it.version}", sources)
    on_root = dump.uuid == root.uuid
    directory = f"/lib/modules/{it.version}"
    drivers = (set() if on_root else set(dump.modules)) | _sender_modules(it, index)
    settings = {
        "target": None if on_root else _target_settings(dump),
        "dump_path": str(cfg.dump_path),
        "modules": [f"{directory}/{m}" for m in index.load_order(drivers)],
        "programs": it.programs,
        "capture": {k: _jsonable(getattr(cfg, k)) for k in CAPTURE_KEYS},
        "send": _send_settings(it),
    }
    contents.put(SETTINGS, cpio.regular(json.dumps(settings, indent=1, sort_keys=True).encode()))
    modules = _modules(contents, index, set(root.modules))
    lvm = it.lvm if root.volume_groups else ""
    script = _stage_one(it.busybox, lvm, root, modules, cfg, it.python)
    contents.put("init", cpio.regular(script.encode(), 0o755))
    return Plan(dump, contents.entries, it.key, sources.seen, it.route)


Planner = Callable[[config.Config, str, Path], Plan]


def choose(
    cfg: config.Config, version: str, sysroot: Path = Path("/"), planner: Planner = plan
) -> tuple[Plan | None, str]:
    """The capture initramfs's plan, or None and why the machine's own boot is armed
    instead ("" when the config names its initrd: the admin's choice, not a problem)."""
    if cfg.initrd is not None:
        return None, ""
    try:
        return planner(cfg, version, sysroot), ""
    except (Unreachable, OSError) as e:
        return None, str(e)


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Image:
    path: Path
    size: int  # compressed, as loaded
    unpacked: int  # the archive, as it sits in the crash kernel's memory
    seconds: float  # spent building it; 0 when it came from the cache
    route: network.Route | None  # the way it sends the dump (its settings hold it)


def compress(data: bytes) -> bytes:
    return lzma.compress(data, lzma.FORMAT_XZ, lzma.CHECK_CRC32, filters=XZ_FILTERS)


def sizes(p: Plan, cache: Path = CACHE_DIR) -> tuple[int, int]:
    """The image's size as loaded and unpacked, without writing it (for `kdumpd check`)."""
    image = find(p, cache)
    return (image.size if image else len(compress(p.archive))), len(p.archive)


def find(p: Plan, cache: Path = CACHE_DIR) -> Image | None:
    """The image of this very content, if it was built before."""
    path = cache / p.file_name
    return Image(path, path.stat().st_size, len(p.archive), 0.0, p.route) if path.exists() else None


# In the cache beside the image: the plan it came from (Intent.key, Sources.seen), so the
# next start need not read every file again to find it (measured in the stock guest: the
# plan took 0.4-0.6 s of the daemon's start at boot, all before the first load).
MANIFEST = "plan.json"
MANIFEST_MAX = 1 << 20


def remember(p: Plan, image: Image, cache: Path = CACHE_DIR) -> None:
    """Write down which image this plan gave, for recall()."""
    if not p.key:
        return
    record = dict(key=p.key, sources=p.sources, image=image.path.name, unpacked=image.unpacked)
    tmp = cache / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(record))
    tmp.rename(cache / MANIFEST)


def recall(cfg: config.Config, version: str, sysroot: Path = Path("/"), cache: Path = CACHE_DIR,
           python: str = "") -> Image | None:  # fmt: skip
    """The image the last plan gave, if a plan made now would be the same: the same intent,
    and not one of the files it read changed (their identity, not their contents; a file
    changed but equal gives a new plan with the same image, which is not built again)."""
    if cfg.initrd is not None:
        return None
    try:
        record = json.loads(safefile.read(cache / MANIFEST, MANIFEST_MAX))
        now = intent(cfg, version, sysroot, python)
        if record["key"] != now.key or not _unchanged(record["sources"]):
            return None
        name = record["image"]
        if not (isinstance(name, str) and name.startswith(IMAGE_PREFIX) and "/" not in name):
            return None
        path = cache / name
        return Image(path, path.stat().st_size, int(record["unpacked"]), 0.0, now.route)
    except (OSError, ValueError, LookupError, TypeError, AttributeError, Unreachable):
        return None  # safefile.Refused is an OSError


def build(p: Plan, cache: Path = CACHE_DIR) -> Image:
    """Compress the archive into the cache; older images are removed."""
    started = time.monotonic()
    data = p.archive
    path = cache / p.file_name
    packed = compress(data)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(packed)
    tmp.rename(path)
    for old in cache.glob(f"{IMAGE_PREFIX}*"):
        if old != path:  # a loaded crash kernel has its own copy (loader.snapshot)
            old.unlink(missing_ok=True)
    return Image(path, len(packed), len(data), time.monotonic() - started, p.route)
