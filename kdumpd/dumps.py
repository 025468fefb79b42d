"""Saved dumps on disk: one folder each under the dump path, described by metadata.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def as_dict(self) -> dict[str, Any]:
        return {
            "Path": str(self.path),
            "TimeUsec": self.time_usec,
            "KernelVersion": self.kernel_version,
            "SizeBytes": self.size_bytes,
            "Complete": self.complete,
            "PanicMessage": self.panic_message,
            "Error": self.error,
        }


def read(folder: Path) -> Dump:
    """Describe one dump folder; the vmcore file, not the metadata, decides completeness."""
    try:
        meta: dict[str, Any] = json.loads((folder / METADATA).read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        meta = {"error": f"{METADATA} unreadable: {e}"}
    vmcore = folder / VMCORE
    complete = vmcore.is_file()
    core = vmcore if complete else folder / INCOMPLETE
    size = core.stat().st_size if core.is_file() else 0
    error = str(meta.get("error", ""))
    if not complete and not error:
        error = "capture did not finish"
    try:
        time_usec = int(meta.get("time_usec", 0)) or int(folder.stat().st_mtime * 1_000_000)
    except (TypeError, ValueError):
        time_usec = int(folder.stat().st_mtime * 1_000_000)
    return Dump(
        path=folder,
        time_usec=time_usec,
        kernel_version=str(meta.get("kernel_version", "")),
        size_bytes=size,
        complete=complete,
        panic_message=str(meta.get("panic_message", "")),
        error=error,
    )


def scan(root: Path) -> list[Dump]:
    """Every dump folder under root, oldest first."""
    try:
        folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    found = [
        read(f)
        for f in folders
        if (f / METADATA).exists() or (f / VMCORE).exists() or (f / INCOMPLETE).exists()
    ]
    return sorted(found, key=lambda d: (d.time_usec, d.path.name))
