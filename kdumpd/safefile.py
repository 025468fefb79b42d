"""Small files, safely. Reading one that may not be what its name says: a FIFO, a device, a
symlink to /dev/zero, or far too big (never blocks, never reads more than asked, never
follows a symlink it was told not to). Writing one whole or not at all, on the disk
before whatever comes next (a crash, on purpose or not)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from kdumpd.sizes import human_size

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


def identity(st: os.stat_result, ctime: bool = True) -> tuple[int, ...]:
    """Which file this is and whether it changed: device, inode, size, mtime and ctime. A
    file rewritten in place with its old mtime still gets a new ctime; so does one given a
    new hard link or mode (update-initramfs links the old initrd to .dpkg-bak before it
    writes the new one): ctime=False leaves it out where that must not count as a change."""
    found = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return (*found, st.st_ctime_ns) if ctime else found


class Refused(OSError):
    """The file is not a regular file of at most the size asked for; str() says why."""


def check_regular(mode: int) -> None:
    for test, kind in _KINDS:
        if test(mode):
            raise Refused(f"is {kind}, not a regular file")


def read(
    path: Path | str, limit: int, *, dir_fd: int | None = None, follow_symlinks: bool = True
) -> bytes:
    """The whole file, at most `limit` bytes. O_NONBLOCK: opening a FIFO or a tty must not
    wait for a writer; fstat then refuses them before anything is read."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as e:
        # ELOOP: the symlink O_NOFOLLOW refused; ENXIO: a socket. Say what the file is.
        if e.errno in (errno.ELOOP, errno.ENXIO):
            check_regular(os.stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks).st_mode)
        raise
    try:
        check_regular(os.fstat(fd).st_mode)
        data = b""
        while len(data) <= limit and (chunk := os.read(fd, limit + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limit:
        raise Refused(f"is larger than {human_size(limit)}")
    return data


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str | bytes) -> None:
    """Through a temporary file renamed into place, each fsynced, and the directory too."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    fsync(tmp)
    tmp.rename(path)
    fsync(path.parent)
