"""What the dead kernel left for us: its VMCOREINFO note and its last kernel messages."""

from __future__ import annotations

import re
import struct
from typing import BinaryIO

_PT_NOTE = 4
_HEADER_MAX = 1 << 20  # notes sit right after the ELF header; this bounds what we read


def vmcoreinfo(f: BinaryIO) -> dict[str, str]:
    """KEY=value lines of the VMCOREINFO ELF note of /proc/vmcore (64-bit little or big
    endian, as the capture kernel presents it). Empty when there is none."""
    head = f.read(64)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:
        return {}
    order = "<" if head[5] == 1 else ">"
    (phoff,) = struct.unpack_from(order + "Q", head, 32)
    phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
            order + "IIQQQQ", table, i * phentsize
        )
        if p_type != _PT_NOTE or p_filesz > _HEADER_MAX:
            continue
        f.seek(p_offset)
        found = _find_note(f.read(p_filesz), order, b"VMCOREINFO")
        if found is not None:
            return parse_vmcoreinfo(found.decode("ascii", "replace"))
    return {}


def _find_note(notes: bytes, order: str, wanted: bytes) -> bytes | None:
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, _ = struct.unpack_from(order + "III", notes, pos)
        name_start = pos + 12
        desc_start = name_start + (namesz + 3) // 4 * 4
        if notes[name_start : name_start + namesz].rstrip(b"\0") == wanted:
            return notes[desc_start : desc_start + descsz]
        if namesz == 0 and descsz == 0:
            break
        pos = desc_start + (descsz + 3) // 4 * 4
    return None


def parse_vmcoreinfo(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


# What the kernel prints when it dies, most telling first.
_PANIC_PATTERNS = (
    re.compile(r"Kernel panic - not syncing: (?P<msg>.+)"),
    re.compile(r"(?P<msg>BUG: .+)"),
    re.compile(r"(?P<msg>Oops: .+)"),
    re.compile(r"(?P<msg>general protection fault.*)"),
    re.compile(r"(?P<msg>kernel BUG at .+)"),
    re.compile(r"(?P<msg>Unable to handle kernel .+)"),
)
_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")


def panic_message(dmesg: str) -> str:
    """The reason the kernel died, from its log as makedumpfile --dump-dmesg writes it."""
    lines = [_TIMESTAMP.sub("", line).strip() for line in dmesg.splitlines()]
    for pattern in _PANIC_PATTERNS:
        for line in reversed(lines):
            match = pattern.search(line)
            if match:
                return match.group("msg").strip()
    return ""
