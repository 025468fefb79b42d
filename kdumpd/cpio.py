"""A cpio archive in the "newc" format, the one the kernel unpacks as an initramfs
(init/initramfs.c; Documentation/driver-api/early-userspace/buffer-format.rst).

Deterministic: entries in path order (so every directory comes before what it holds, as
the kernel needs), mtime 0, inode numbers by position, owner root. The same files give
the same bytes.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    mode: int  # file type and permission bits, as st_mode
    data: bytes = b""  # file contents, or a symlink's target
    rdev: tuple[int, int] = (0, 0)  # major, minor of a device node


def directory(perm: int = 0o755) -> Entry:
    return Entry(stat.S_IFDIR | perm)


def regular(data: bytes, perm: int = 0o644) -> Entry:
    return Entry(stat.S_IFREG | perm, data)


def symlink(target: str) -> Entry:
    return Entry(stat.S_IFLNK | 0o777, target.encode())


def char_device(major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, name: bytes) -> bytes:
    fields = (
        ino,
        entry.mode,
        0,  # uid
        0,  # gid
        2 if stat.S_ISDIR(entry.mode) else 1,  # nlink
        0,  # mtime
        len(entry.data),
        0,  # devmajor
        0,  # devminor
        entry.rdev[0],
        entry.rdev[1],
        len(name) + 1,
        0,  # check
    )
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def archive(entries: dict[str, Entry]) -> bytes:
    """The archive of `entries`, keyed by path without the leading slash."""
    out = bytearray()
    items = sorted(entries.items())
    items.append(("TRAILER!!!", Entry(0)))
    for ino, (path, entry) in enumerate(items, start=1):
        name = path.encode()
        out += _header(0 if path == "TRAILER!!!" else ino, entry, name)
        out += name + b"\0" + _pad(110 + len(name) + 1)
        out += entry.data + _pad(len(entry.data))
    return bytes(out)
