"""Build (once) and cache the Debian guest image the VM tests boot.

The image lives outside the repository, under ``/var/cache/kdumpd-tests/<key>/``, where
``<key>`` hashes everything that shapes it (this file included), so editing the recipe
rebuilds it and nothing else does.  Run ``python -m tests.vm.image [SUITE]`` to build and
print it (SUITE: bookworm, the default, or trixie).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

SUITE = "bookworm"  # Debian 12: every VM test
TRIXIE = "trixie"  # Debian 13: the core, capture and reload set (tests/vm/test_trixie.py)
SUITES = (SUITE, TRIXIE)
DISK_SIZE = "3G"
HOSTNAME = "kdumpd-guest"
TEST_USER = "tester"
TEST_UID = 1000
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "udev",
    "python3",
    "python3-gi",
    "python3-pydbus",
    "python3-systemd",
    "python3-yaml",
    "kmod",
    "linux-image-amd64",
    "initramfs-tools",
    "makedumpfile",
    "procps",
    "qemu-guest-agent",
    "polkitd",
    # polkitd depends on "default-logind | logind"; debootstrap does not resolve alternatives.
    "libpam-systemd",
    "e2fsprogs",
    "util-linux",
    "zstd",
    "lvm2",
    # What kdumpd's capture initramfs starts with (initramfs-tools recommends it too).
    "busybox",
)
# Units that only cost boot time under TCG (or write to the disk behind the tests' back).
MASKED_UNITS: tuple[str, ...] = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "apt-daily.service",
    "apt-daily-upgrade.service",
    "dpkg-db-backup.timer",
    "dpkg-db-backup.service",
    "e2scrub_all.timer",
    "e2scrub_all.service",
    "e2scrub_reap.service",
    "man-db.timer",
    "man-db.service",
    "fstrim.timer",
    "fstrim.service",
    "systemd-timesyncd.service",
    "getty@tty1.service",
)
# What the guest needs before its root file system is mounted.
INITRAMFS_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic")
CACHE_ROOT = Path(os.environ.get("KDUMPD_VM_CACHE", "/var/cache/kdumpd-tests"))


@dataclass(frozen=True)
class ImagePaths:
    disk: Path
    kernel: Path
    initrd: Path


class ImageBuildError(RuntimeError):
    pass


def image_key(stock: bool = False, suite: str = SUITE) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update("\0".join((suite, DISK_SIZE, *PACKAGES, "stock" if stock else "")).encode())
    return h.hexdigest()[:16]


def _paths(d: Path) -> ImagePaths:
    return ImagePaths(disk=d / "disk.img", kernel=d / "vmlinuz", initrd=d / "initrd.img")


def _log(msg: str) -> None:
    print(f"[vm-image] {msg}", file=sys.stderr, flush=True)


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:  # continuation line
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields:
            yield fields


def debian_mirror(suite: str = SUITE) -> str:
    """The host's own apt mirror for `suite` ("trixie", "trixie-security"), else the one it
    has for SUITE's counterpart ("bookworm-security": one archive holds every release);
    never hard-coded so no hostname lives in the repo."""
    try:
        return _host_mirror(suite)
    except ImageBuildError:
        release, dash, pocket = suite.partition("-")
        if release == SUITE:
            raise
        return _host_mirror(SUITE + dash + pocket)


def _host_mirror(suite: str) -> str:
    for src in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for st in _deb822_stanzas(src.read_text()):
            if (
                "deb" in st.get("types", "").split()
                and suite in st.get("suites", "").split()
                and st.get("enabled", "yes").lower() != "no"
            ):
                uris = st.get("uris", "").split()
                if uris:
                    return uris[0]
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for lst in lists:
        if not lst.exists():
            continue
        for line in lst.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    raise ImageBuildError(f"no apt source for suite {suite!r} in /etc/apt (needed by debootstrap)")


def _run(cmd: Sequence[str | Path], what: str) -> None:
    """Run a build step; on failure show the tail of its output (kept in memory, not on disk)."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.decode(errors="replace").splitlines()[-40:])
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}): {cmd[0]}\n{tail}")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split()[4].replace("\\040", " ")
        if mnt == prefix or mnt.startswith(prefix + "/"):
            found.append(mnt)
    return found


def _remove_tree(path: Path) -> None:
    # An interrupted debootstrap leaves proc/sys mounted in the target; rmtree must not follow.
    for mnt in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False)
    shutil.rmtree(path, ignore_errors=True)


def _configure_rootfs(root: Path, stock: bool, suite: str) -> None:
    etc = root / "etc"
    (etc / "fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    (etc / "hostname").write_text(HOSTNAME + "\n")
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n::1 localhost\n")
    # The guest has no network: no apt sources (this also keeps the mirror name out of the image).
    (etc / "apt" / "sources.list").write_text("")
    for extra in (etc / "apt" / "sources.list.d").glob("*"):
        extra.unlink()
    # A fixed machine-id avoids systemd's first-boot path (preset-all, id commit) on every boot.
    machine_id = hashlib.sha256(image_key(stock, suite).encode()).hexdigest()[:32]
    (etc / "machine-id").write_text(machine_id + "\n")
    _run(
        ["chroot", root, "useradd", "-m", "-u", str(TEST_UID), "-U", "-s", "/bin/sh", TEST_USER],
        "useradd",
    )
    # Debian's MODULES=most copies thousands of modules: an initramfs rebuild inside the guest
    # (a kernel install, update-initramfs -u) then takes over 15 minutes under TCG. A fixed list
    # of what this virtual machine boots from is as small and fast as MODULES=dep, and unlike
    # dep it also works in the chroot here. The stock image keeps Debian's default (what
    # users have: memory is measured on it), and no test installs a kernel in it.
    if not stock:
        (etc / "initramfs-tools" / "conf.d" / "kdumpd-tests").write_text("MODULES=list\n")
        (etc / "initramfs-tools" / "modules").write_text("\n".join(INITRAMFS_MODULES) + "\n")
        _run(["chroot", root, "update-initramfs", "-u", "-k", "all"], "update-initramfs")
    unit_dir = etc / "systemd" / "system"
    for unit in MASKED_UNITS:
        link = unit_dir / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # No wants link for qemu-guest-agent: Debian's udev rule (SYSTEMD_WANTS on the virtio port)
    # starts it, verified by booting without one; a link would also fail boot without the port.

    # Keep the image small: nothing below is needed offline or at run time.
    for pattern in (
        "var/lib/apt/lists/*",
        "var/cache/apt/*.bin",
        "var/cache/apt/archives/*.deb",
        "var/cache/debconf/*-old",
        "var/log/*.log",
        "usr/share/doc/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
    ):
        for p in root.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.name not in ("lock", "partial"):
                p.unlink()
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)


def _build(out: Path, stock: bool, suite: str) -> None:
    root = out / "rootfs"
    mirror = debian_mirror(suite)
    env_proxy = os.environ.get("http_proxy") or os.environ.get("HTTP_PROXY")
    _log(f"debootstrap {suite} ({len(PACKAGES)} packages){' via proxy' if env_proxy else ''}")
    t0 = time.monotonic()
    cmd: list[str | Path] = [
        "debootstrap",
        "--variant=minbase",
        "--components=main",
        "--include=" + ",".join(PACKAGES),
        suite,
        root,
        mirror,
    ]
    try:
        _run(cmd, "debootstrap")
    except ImageBuildError as exc:
        dlog = root / "debootstrap" / "debootstrap.log"
        if dlog.exists():
            tail = "\n".join(dlog.read_text(errors="replace").splitlines()[-30:])
            raise ImageBuildError(f"{exc}\n--- debootstrap.log ---\n{tail}") from None
        raise
    _log(f"debootstrap done in {time.monotonic() - t0:.0f}s")
    _configure_rootfs(root, stock, suite)
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise ImageBuildError(f"expected one kernel and initrd in /boot, got {kernels} {initrds}")
    paths = _paths(out)
    shutil.copyfile(kernels[0], paths.kernel)
    shutil.copyfile(initrds[0], paths.initrd)
    t1 = time.monotonic()
    _run(["mkfs.ext4", "-q", "-L", "kdumpd-root", "-d", root, "-F", paths.disk, DISK_SIZE], "mkfs")
    _log(f"mkfs.ext4 done in {time.monotonic() - t1:.0f}s")
    _remove_tree(root)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale_builds(held_key: str) -> None:
    """Remove build dirs left by interrupted builds: those whose key lock nobody holds."""
    for stale in CACHE_ROOT.glob(".build-*"):
        key = stale.name.split("-")[1]
        if key == held_key:
            _log(f"removing leftover {stale}")
            _remove_tree(stale)
            continue
        with (CACHE_ROOT / f".{key}.lock").open("a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another builder is working on it right now
            _log(f"removing leftover {stale}")
            _remove_tree(stale)


def _prune_old_images(current: set[str]) -> None:
    """Drop images of other recipes (~750 MB each) that no process is using.

    Users hold a shared lock on their image's lock file (see ``_hold``), so the exclusive
    non-blocking lock taken here fails for any image a test session still needs."""
    for old in CACHE_ROOT.iterdir():
        if old.name in current or not re.fullmatch(r"[0-9a-f]{16}", old.name):
            continue
        with (CACHE_ROOT / f".{old.name}.lock").open("a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            _log(f"removing old image {old}")
            shutil.rmtree(old, ignore_errors=True)
        # The empty lock file stays: unlinking it could let two builders lock different inodes.


_HELD: dict[str, TextIO] = {}  # shared locks on the images this process uses, kept until exit


def _hold(key: str) -> bool:
    """Take a shared lock on a complete image so no other recipe's build prunes it under us."""
    if key in _HELD:
        return True
    fh = (CACHE_ROOT / f".{key}.lock").open("a")
    fcntl.flock(fh, fcntl.LOCK_SH)
    if not (CACHE_ROOT / key).is_dir():  # pruned (or never built) before we got the lock
        fh.close()
        return False
    _HELD[key] = fh
    return True


def ensure_image(stock: bool = False, suite: str = SUITE) -> ImagePaths:
    """Return the cached image for the current recipe, building it first if needed.
    stock: the initramfs as Debian configures it (MODULES=most), not cut down for speed.

    The image stays locked (shared) for the life of this process."""
    key = image_key(stock, suite)
    final = CACHE_ROOT / key
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    while not _hold(key):
        with locked(CACHE_ROOT / f".{key}.lock"):
            if final.is_dir():  # another builder finished while we waited for the lock
                continue
            _remove_stale_builds(key)
            tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=CACHE_ROOT))
            t0 = time.monotonic()
            try:
                _build(tmp, stock, suite)
                tmp.chmod(0o755)  # mkdtemp made it 0700
                os.rename(tmp, final)  # atomic: the key dir is either complete or absent
            except BaseException:
                _remove_tree(tmp)
                raise
            _log(f"image {key} built in {time.monotonic() - t0:.0f}s")
    _prune_old_images({image_key(s, suite) for s in (False, True) for suite in SUITES})
    return _paths(final)


def main() -> int:
    suite = sys.argv[1] if len(sys.argv) > 1 else SUITE
    try:
        if suite == SUITE:
            ensure_image(stock=True)
        paths = ensure_image(suite=suite)
    except ImageBuildError as exc:
        print(f"image build failed: {exc}", file=sys.stderr)
        return 1
    print(paths.disk.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
