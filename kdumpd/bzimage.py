"""What the x86 boot header of a kernel image says: its version and command-line limit.

See Documentation/arch/x86/boot.rst. Other architectures have no such header; callers
fall back to defaults there.
"""

from __future__ import annotations

import struct
from pathlib import Path

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
