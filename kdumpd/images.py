"""What kernel images and initrds say about themselves, read before anything is loaded.

The x86 boot header (Documentation/arch/x86/boot.rst) gives the image's version and its
command-line limit; other architectures have no such header and get defaults. The kernel
accepts any bytes as an initrd, and a truncated kernel image passes its checks too: both
would load fine and only fail at crash time. unfit() is the one place that decides whether
the copies about to be loaded are fit to boot.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from kdumpd import kernel_image, packaged
from kdumpd.loader import Image

_HEADER_MAGIC_OFFSET = 0x202  # "HdrS"
_VERSION_OFFSET = 0x206  # boot protocol version, u16
_KERNEL_VERSION_OFFSET = 0x20E  # u16 pointer to a NUL-terminated string, minus 0x200
_CMDLINE_SIZE_OFFSET = 0x238  # u32, protocol >= 2.06
_HEADER_END = 0x240

# COMMAND_LINE_SIZE is 2048 (with the NUL) on x86 since 2.6.31 and on arm64, riscv, s390x and
# ppc64; a 2.06+ x86 header reports it, older x86 boot protocols allowed 255 characters.
DEFAULT_CMDLINE_MAX = 2047
_OLD_PROTOCOL_CMDLINE_MAX = 255


def _protocol(data: bytes) -> int | None:
    """The boot protocol version, or None when this is not an x86 bzImage."""
    if len(data) < _HEADER_END or data[_HEADER_MAGIC_OFFSET : _HEADER_MAGIC_OFFSET + 4] != b"HdrS":
        return None
    (protocol,) = struct.unpack_from("<H", data, _VERSION_OFFSET)
    return int(protocol)


def cmdline_max(data: bytes) -> int:
    """Longest command line (without the NUL) the image accepts."""
    protocol = _protocol(data)
    if protocol is None:
        return DEFAULT_CMDLINE_MAX
    if protocol < 0x206:
        return _OLD_PROTOCOL_CMDLINE_MAX
    (size,) = struct.unpack_from("<I", data, _CMDLINE_SIZE_OFFSET)
    return int(size)


def kernel_version(data: bytes) -> str | None:
    """The `uname -r` of the image, e.g. '6.1.0-28-amd64', when the header names it."""
    if _protocol(data) is None:
        return None
    (pointer,) = struct.unpack_from("<H", data, _KERNEL_VERSION_OFFSET)
    start = pointer + 0x200
    if not pointer or start >= len(data):
        return None
    end = data.find(b"\0", start, start + 256)
    words = data[start : end if end >= 0 else start + 256].split()
    return words[0].decode("ascii", "replace") if words else None


def read_head(path: Path) -> bytes:
    """Enough of the image to cover the version string, which lives in the setup code."""
    with path.open("rb") as f:
        return f.read(0x8000)


# Formats the kernel unpacks (usr/Kconfig and lib/decompress.c), cpio first: an early
# microcode archive comes uncompressed before the compressed main one.
_INITRD_MAGIC = {
    b"070701": "cpio",
    b"070702": "cpio",
    b"070707": "cpio",
    b"\x1f\x8b": "gzip",
    b"\x1f\x9e": "gzip",
    b"BZh": "bzip2",
    b"\x5d\x00\x00": "lzma",
    b"\xfd7zXZ\x00": "xz",
    b"\x89LZO": "lzo",
    b"\x02\x21\x4c\x18": "lz4",
    b"\x28\xb5\x2f\xfd": "zstd",
}


def initrd_format(head: bytes) -> str | None:
    """The initrd's format from its first bytes, or None when it is none the kernel knows."""
    return next((name for magic, name in _INITRD_MAGIC.items() if head.startswith(magic)), None)


def unfit(kernel: Image, initrd: Image | None, machine: str, sysroot: Path) -> str | None:
    """Why these copies must not replace the loaded crash kernel, or None when they may."""
    if initrd and initrd_format(os.pread(initrd.fd, 8, 0)) is None:
        return (
            f"{initrd.path} is not an initramfs (no cpio or compressed archive the kernel "
            "can unpack); refusing to load it"
        )
    if not kernel.size:
        return f"refusing to load {kernel.path}: it is empty"
    refused = f"refusing to load {kernel.path}"
    with mmap.mmap(kernel.fd, kernel.size, prot=mmap.PROT_READ) as data:
        try:
            kernel_image.check(data, machine)
        except kernel_image.BadImage as e:
            owner = packaged.dpkg_md5(sysroot, kernel.path)
            fix = packaged.reinstall(owner[0]) if owner else "install or build it again"
            return f"{refused}: {e}; {fix}"
        try:
            packaged.check(sysroot, kernel.path, data)
        except packaged.Modified as e:
            return f"{refused}: {e}"
    return None
