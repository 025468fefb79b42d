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
from kdumpd.kernel_image import Data
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


# --- How big an initramfs is once unpacked ---------------------------------------------
# init/initramfs.c unpacks the archives one after another into the root tmpfs; the
# compressed main archive comes last (after uncompressed early cpio archives). The
# formats below say their unpacked size without being decompressed; the others do not.

_CPIO_HEADER = 110
GZIP_PLAUSIBLE_RATIO = 16
_ZSTD_BLOCK_MAX = 128 << 10  # RFC 8878 Block_Maximum_Size: zstd cuts its input this fine


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _cpio_end(data: Data, at: int) -> tuple[int, int]:
    """Where the newc archive at `at` ends (after its TRAILER!!!), and its files' bytes."""
    files = 0
    while True:
        header = bytes(data[at : at + _CPIO_HEADER])
        if len(header) < _CPIO_HEADER or not header.startswith(b"07070"):
            raise ValueError(f"cpio header expected at {at}")
        size, namesize = int(header[54:62], 16), int(header[94:102], 16)
        name = bytes(data[at + _CPIO_HEADER : at + _CPIO_HEADER + namesize - 1])
        at = _align4(at + _CPIO_HEADER + namesize)
        at = _align4(at + size)
        files += size
        if name == b"TRAILER!!!":
            return at, files


def _zstd_unpacked(data: Data, at: int) -> int:
    """A bound on what the zstd frames from `at` to the end unpack to: the frame header's
    content size where it has one, else its blocks': raw and RLE blocks say their size,
    a compressed block unpacks to at most 128 KiB, and the zstd tool fills every block
    but the last."""
    total = 0
    while at + 6 <= len(data):
        magic = bytes(data[at : at + 4])
        if magic[1:] == b"\x2a\x4d\x18" and 0x50 <= magic[0] <= 0x5F:  # a skippable frame
            at += 8 + int.from_bytes(data[at + 4 : at + 8], "little")
            continue
        if magic != kernel_image.ZSTD_MAGIC:
            break  # padding after the last frame
        frame = kernel_image.zstd_frame(data, at)
        bound = sum(
            _ZSTD_BLOCK_MAX if kind == kernel_image.ZSTD_COMPRESSED else size
            for kind, size in frame.blocks
        )
        total += bound if frame.content_size is None else frame.content_size
        at = frame.end
    return total


def _xz_unpacked(data: Data, at: int) -> int:
    """From the index of the xz stream from `at` to the end of the file."""
    end = len(data)
    while end > 12 and bytes(data[end - 4 : end]) == b"\0\0\0\0":  # stream padding
        end -= 4
    records, _ = kernel_image.xz_index(data[at:end])
    return sum(uncompressed for _, uncompressed in records)


def unpacked_size(data: Data) -> int | None:
    """The initramfs's size once unpacked, or None when a part's format does not say
    (bzip2, lzma, lzo, lz4) or the file is damaged."""
    at = total = 0
    try:
        while at < len(data):
            fmt = initrd_format(bytes(data[at : at + 6]))
            if data[at : at + 4] == b"\0\0\0\0":  # padding between archives
                at += 4
            elif fmt == "cpio":
                at, files = _cpio_end(data, at)
                total += files
            elif fmt == "zstd":
                return total + _zstd_unpacked(data, at)
            elif fmt == "xz":
                return total + _xz_unpacked(data, at)
            elif fmt == "gzip":  # RFC 1952 ISIZE: the size modulo 4 GiB, of the last member
                size = int.from_bytes(data[len(data) - 4 :], "little")
                # deflate's own limit is 1032:1; an archive of programs and modules is
                # far from it, and a damaged trailer says nothing.
                return total + size if size <= GZIP_PLAUSIBLE_RATIO * (len(data) - at) else None
            else:
                return None
    except (ValueError, IndexError, kernel_image.BadImage):
        return None
    return total


def initrd_unpacked(path: Path | None) -> int:
    """unpacked_size of an initrd file; 0 when there is none or its format does not say."""
    if path is None:
        return 0
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
            return unpacked_size(data) or 0
    except (OSError, ValueError):  # unreadable, or empty (mmap of 0 bytes)
        return 0
