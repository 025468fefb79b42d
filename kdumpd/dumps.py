"""Saved dumps on disk: one folder each under the dump path, described by metadata.json."""

from __future__ import annotations

import json
import os
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdumpd import safefile

DEFAULT_PATH = Path("/var/crash")
METADATA = "metadata.json"
VMCORE = "vmcore"
INCOMPLETE = "vmcore.incomplete"
DMESG = "vmcore-dmesg.txt"
CAPTURE_LOG = "capture.log"

# D-Bus types of the a{sv} that ListDumps returns for each dump.
FIELD_TYPES = {
    "Path": "s",
    "TimeUsec": "t",
    "KernelVersion": "s",
    "SizeBytes": "t",
    "Complete": "b",
    "PanicMessage": "s",
    "Error": "s",
    "Location": "s",
}


@dataclass(frozen=True)
class Dump:
    path: Path
    time_usec: int
    kernel_version: str
    size_bytes: int
    complete: bool
    panic_message: str
    error: str  # why the capture failed, "" when it did not
    location: str = ""  # the URL of a dump sent to a target; the folder is its record

    def as_dict(self) -> dict[str, Any]:
        return {
            "Path": str(self.path),
            "TimeUsec": self.time_usec,
            "KernelVersion": self.kernel_version,
            "SizeBytes": self.size_bytes,
            "Complete": self.complete,
            "PanicMessage": self.panic_message,
            "Error": self.error,
            "Location": self.location,
        }


# A dump folder is written by root in the crash kernel, but anyone may list it over D-Bus:
# nothing in it is followed, trusted or read unbounded, and one bad folder is that
# entry's Error, never the whole list's.
METADATA_MAX = 64 << 10
# Year 10000: a time a date can show, and within D-Bus type t.
MAX_USEC = 253_402_300_800 * 1_000_000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _usec(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_USEC:
        raise ValueError(f"{reprlib.repr(value)} is not a time in µs since 1970")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{reprlib.repr(value)} is not a string")
    if "\0" in value:
        raise ValueError("contains a NUL byte")
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
        raise ValueError("is not valid Unicode") from None
    return value


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise ValueError(f"{reprlib.repr(value)} is not a size in bytes")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{reprlib.repr(value)} is not true or false")
    return value


# The metadata.json fields that are listed, each checked to fit its D-Bus type. Size and
# completeness are the vmcore file's, except for a dump sent to a target (`location`).
_FIELDS = {
    "time_usec": _usec,
    "kernel_version": _text,
    "panic_message": _text,
    "error": _text,
    "location": _text,
    "size_bytes": _size,
    "complete": _flag,
}


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _metadata(fd: int) -> tuple[dict[str, Any], list[str]]:
    """The checked fields of metadata.json in the folder open as fd, and what is wrong."""
    try:
        data = safefile.read(METADATA, METADATA_MAX, dir_fd=fd, follow_symlinks=False)
        meta = json.loads(data.decode(), parse_constant=_refuse_constant)
    except FileNotFoundError:  # written last: a capture that did not finish has none
        return {}, []
    except safefile.Refused as e:
        return {}, [f"{METADATA} {e}"]
    except OSError as e:
        return {}, [f"{METADATA} cannot be read: {e.strerror}"]
    except UnicodeDecodeError:
        return {}, [f"{METADATA} is not UTF-8 text"]
    except RecursionError:
        return {}, [f"{METADATA} is nested too deeply"]
    except ValueError as e:
        return {}, [f"{METADATA} is not valid JSON: {e}"]
    if not isinstance(meta, dict):
        return {}, [f"{METADATA} is not a JSON object"]
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, check in _FIELDS.items():
        if key in meta:
            try:
                values[key] = check(meta[key])
            except ValueError as e:
                problems.append(f"{METADATA}: {key}: {e}")
    return values, problems


def _core(fd: int) -> tuple[bool, int, list[str]]:
    """Complete or not, the size, and what is wrong: from lstat alone, the vmcore is not
    opened (nor followed when it is a symlink)."""
    for name, complete in ((VMCORE, True), (INCOMPLETE, False)):
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            safefile.check_regular(st.st_mode)
        except FileNotFoundError:
            continue
        except safefile.Refused as e:
            return False, 0, [f"{name} {e}"]
        except OSError as e:
            return False, 0, [f"{name} cannot be read: {e.strerror}"]
        return complete, st.st_size, []
    return False, 0, []


def _mtime_usec(st: os.stat_result) -> int:
    usec = st.st_mtime_ns // 1000
    return usec if 0 <= usec < MAX_USEC else 0


def read(folder: Path) -> Dump:
    """Describe one dump folder. Here, the vmcore file, not the metadata, decides
    completeness; for a record of a dump sent to a target (its metadata has a location),
    what the crashed machine recorded does: the dump itself is not here."""
    try:
        fd = os.open(folder, _DIR_FLAGS)
    except OSError as e:
        try:
            usec = _mtime_usec(os.stat(folder, follow_symlinks=False))
        except OSError:
            usec = 0
        return Dump(folder, usec, "", 0, False, "", f"cannot be read: {e.strerror}")
    try:
        meta, problems = _metadata(fd)
        if location := meta.get("location", ""):
            complete, size = meta.get("complete", False), meta.get("size_bytes", 0)
            core_problems: list[str] = []
        else:
            complete, size, core_problems = _core(fd)
        usec = meta.get("time_usec") or _mtime_usec(os.fstat(fd))
    finally:
        os.close(fd)
    # The capture's own error first: it is why the dump is incomplete.
    error = "; ".join([*filter(None, [meta.get("error", "")]), *problems, *core_problems])
    return Dump(
        path=folder,
        time_usec=usec,
        kernel_version=meta.get("kernel_version", ""),
        size_bytes=size,
        complete=complete,
        panic_message=meta.get("panic_message", ""),
        error=error or ("" if complete else "capture did not finish"),
        location=location,
    )


def _holds_a_dump(folder: Path) -> bool:
    """Whether the folder has any of a dump's files; True when it cannot be listed, so that
    read() says why."""
    try:
        fd = os.open(folder, _DIR_FLAGS)
    except OSError:
        return True
    try:
        return not {METADATA, VMCORE, INCOMPLETE}.isdisjoint(os.listdir(fd))
    except OSError:
        return True
    finally:
        os.close(fd)


def _listable(name: str) -> bool:
    # A name that is not UTF-8 cannot be a D-Bus string nor a journal field: capture never
    # makes one, so it is not a dump.
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return not name.startswith(".")


def scan(root: Path) -> list[Dump]:
    """Every dump folder under root, oldest first; none when root cannot be listed.
    Symlinks are not dump folders: nothing is followed out of the dump path."""
    try:
        with os.scandir(root) as entries:
            folders = [
                root / e.name
                for e in entries
                if _listable(e.name) and e.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return []
    found = [read(f) for f in folders if _holds_a_dump(f)]
    return sorted(found, key=lambda d: (d.time_usec, d.path.name))
