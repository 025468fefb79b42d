"""Which kernel image and initrd to load: running, newest, a version, or explicit paths."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kdumpd.config import Config

# Image names by distribution family: Debian/Ubuntu, then Fedora/Arch (kernel-install layout).
_IMAGE_PATTERNS = ("boot/vmlinuz-{v}", "lib/modules/{v}/vmlinuz", "usr/lib/modules/{v}/vmlinuz")
_INITRD_PATTERNS = (
    "boot/initrd.img-{v}",
    "boot/initramfs-{v}.img",
    "boot/initrd-{v}",
    "lib/modules/{v}/initrd",
)


_VERSION = re.compile(r"[\w.+-]+")
_DPKG_SUFFIX = re.compile(r"\.dpkg-\w+$")


class KernelNotFound(Exception):
    pass


@dataclass(frozen=True)
class KernelFiles:
    version: str
    image: Path
    initrd: Path | None

    def sizes(self) -> tuple[int, int]:
        """Bytes of the kernel image and the initrd (0 without one)."""
        return self.image.stat().st_size, self.initrd.stat().st_size if self.initrd else 0


def version_key(version: str) -> list[tuple[int, int | str]]:
    """Sort key close to dpkg's order: numbers compare as numbers, text as text."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[a-zA-Z]+", version)]


def is_kernel_file(name: str) -> bool:
    """A kernel image or initrd, by the names distributions give them."""
    return name.startswith(("vmlinuz", "initrd", "initramfs"))


def is_version(name: str) -> bool:
    """Not a file a package manager is still writing: dpkg's *.dpkg-new and *.dpkg-tmp,
    rpm's name;5f3a2b1c, an editor's name~."""
    return _VERSION.fullmatch(name) is not None and not _DPKG_SUFFIX.search(name)


def _is_file(path: Path) -> bool:
    # dpkg unpacks directories with mode 0 and fixes them at the end; the daemon has no
    # CAP_DAC_OVERRIDE, so it cannot look inside them until then: not installed yet.
    try:
        return path.is_file()
    except PermissionError:
        return False


def installed_versions(sysroot: Path) -> list[str]:
    """Kernel versions with an image on disk, oldest first."""
    found: set[str] = set()
    for pattern in _IMAGE_PATTERNS:
        prefix, _, suffix = pattern.partition("{v}")
        for image in sysroot.glob(prefix + "*" + suffix):
            version = str(image.relative_to(sysroot))[len(prefix) :][: -len(suffix) or None]
            if is_version(version) and _is_file(image):
                found.add(version)
    return sorted(found, key=version_key)


def _first_existing(sysroot: Path, patterns: tuple[str, ...], version: str) -> Path | None:
    for pattern in patterns:
        candidate = sysroot / pattern.format(v=version)
        if _is_file(candidate):
            return candidate
    return None


def files_for(version: str, sysroot: Path) -> KernelFiles:
    image = _first_existing(sysroot, _IMAGE_PATTERNS, version)
    if image is None:
        looked = ", ".join("/" + p.format(v=version) for p in _IMAGE_PATTERNS)
        raise KernelNotFound(f"no kernel image for {version} (looked for {looked})")
    return KernelFiles(version, image, _first_existing(sysroot, _INITRD_PATTERNS, version))


def choose(config: Config, running: str, sysroot: Path = Path("/")) -> tuple[KernelFiles, str]:
    """The crash kernel to load, and a note when it is not the one asked for ("" otherwise).

    When the wanted kernel's files are gone (a package was removed), fall back to the
    running kernel and then the newest installed one, so the machine stays protected.
    """
    wanted = {"running": running, "latest": None}.get(config.kernel, config.kernel)
    installed = installed_versions(sysroot)
    if wanted is None:
        if not installed:
            raise KernelNotFound(f"no kernel images installed under {sysroot / 'boot'}")
        # An image whose initrd is not written yet is a package still being installed,
        # where the other kernels have initrds.
        ready = [v for v in installed if _first_existing(sysroot, _INITRD_PATTERNS, v)]
        wanted = (ready or installed)[-1]
    try:
        files = files_for(wanted, sysroot)
    except KernelNotFound as missing:
        fallbacks = [running] + [v for v in reversed(installed) if v != running]
        for version in fallbacks:
            try:
                chosen = files_for(version, sysroot)
            except KernelNotFound:
                continue
            return _with_overrides(chosen, config), f"{missing}; using {version} instead"
        raise
    return _with_overrides(files, config), ""


def _with_overrides(files: KernelFiles, config: Config) -> KernelFiles:
    return KernelFiles(
        files.version, config.kernel_image or files.image, config.initrd or files.initrd
    )
