"""`kdumpd test`: crash the machine on purpose, and after the reboot say whether the dump
was saved. Three steps in three programs, joined by two small files:

1. the daemon records the pending test (id, time, boot) in /var/lib/kdumpd/test.json
   (pending), syncs, and asks for the crash: it creates /run/kdumpd/crash, and
   kdumpd-crash.path starts kdumpd-crash.service, which writes "c" to
   /proc/sysrq-trigger (the daemon's own sandbox keeps /proc read-only);
2. the crash kernel writes what its capture did, or why it stopped before, to
   /var/lib/kdumpd/last-capture.json, with the id of the test it found pending
   (capture_record);
3. the first daemon of a later boot compares the two and keeps the verdict in test.json
   (decide): passed when that capture saved a complete dump that is still there, failed
   otherwise, with the reason the crash kernel gave, or that it wrote nothing.

The crash kernel reaches both: capture mode "system" boots the machine's own systemd,
which mounts /var; kdumpd's capture initramfs mounts the root and the dump file system
only, so with it a test is refused when /var/lib/kdumpd is on neither (unreachable). A
capture that could not write to the dump path still says so, on the root file system.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from kdumpd import dumps, safefile

STATE_DIR = Path("var/lib/kdumpd")  # under the sysroot: the daemon's StateDirectory
TEST_RECORD = "test.json"
CAPTURE_RECORD = "last-capture.json"
RECORD_MAX = 64 << 10
RESULTS = ("", "pending", "passed", "failed")


@dataclass(frozen=True)
class Test:
    id: str
    time_usec: int  # CLOCK_REALTIME when the test was asked for, just before the crash
    boot_id: str  # the boot that crashed
    result: str  # pending, passed, failed
    reason: str = ""  # for failed: what went wrong
    dump: str = ""  # the dump folder the test's capture wrote, if any, in dump_path


def _read_json(path: Path) -> dict[str, object] | None:
    """A record, or None when there is none or it is not one we wrote."""
    try:
        value = json.loads(safefile.read(path, RECORD_MAX, follow_symlinks=False))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    safefile.write_durably(path, json.dumps(value))


def unreachable(sysroot: Path, mode: str, dump_path: Path) -> str:
    """Why the crash kernel could not read and write the records, or "": with the capture
    initramfs, /var/lib/kdumpd must be on the root or the dump file system."""
    if mode != "initramfs":
        return ""
    state = sysroot / STATE_DIR
    devices = set()
    for path in (sysroot, dump_path):
        with contextlib.suppress(OSError):
            devices.add(path.stat().st_dev)
    try:
        device = state.stat().st_dev
    except OSError as e:
        return f"cannot read {state}: {e.strerror}"
    if device in devices:
        return ""
    return (
        f"{state} is on a file system that kdumpd's capture initramfs does not mount (only "
        "the root and the dump path's): the crash kernel could not record the test"
    )


def load(sysroot: Path) -> Test | None:
    record = _read_json(sysroot / STATE_DIR / TEST_RECORD)
    if record is None:
        return None
    values = {f.name: record.get(f.name, f.default) for f in fields(Test)}
    for name, value in values.items():
        if not isinstance(value, int if name == "time_usec" else str):
            return None
    if values["result"] not in RESULTS[1:]:
        return None
    return Test(**values)  # type: ignore[arg-type]  # each checked above


def pending(sysroot: Path, boot_id: str, now_usec: int) -> Test:
    """Record a new test, replacing the last one's verdict."""
    test = Test(os.urandom(16).hex(), now_usec, boot_id, "pending")
    _write_json(sysroot / STATE_DIR / TEST_RECORD, asdict(test))
    return test


def abandon(sysroot: Path, test: Test, reason: str) -> Test:
    """The crash was not asked for, or did not come: the test failed before it began."""
    failed = replace(test, result="failed", reason=reason)
    _write_json(sysroot / STATE_DIR / TEST_RECORD, asdict(failed))
    return failed


def capture_record(sysroot: Path, ok: bool, error: str, folder: Path | None) -> None:
    """In the crash kernel, after the capture: what it did, for the test pending if any.
    Best effort: a root file system that cannot take it makes the test fail, not the
    capture."""
    test = load(sysroot)
    record: dict[str, object] = {
        "test_id": test.id if test and test.result == "pending" else "",
        "ok": ok,
        "error": error,
        # Its name: the crash kernel may have mounted the dump file system elsewhere.
        "dump": folder.name if folder else "",
    }
    with contextlib.suppress(OSError):
        _write_json(sysroot / STATE_DIR / CAPTURE_RECORD, record)


def decide(sysroot: Path, boot_id: str, dump_path: Path) -> tuple[Test | None, bool]:
    """The last test, and whether its verdict was reached now (the journal says so once).
    A pending test stays pending in the boot that recorded it: the crash is yet to come."""
    test = load(sysroot)
    if test is None or test.result != "pending" or test.boot_id == boot_id:
        return test, False
    capture = _read_json(sysroot / STATE_DIR / CAPTURE_RECORD) or {}
    if capture.get("test_id") != test.id:
        verdict = replace(
            test,
            result="failed",
            reason="the crash kernel recorded no capture for this test "
            f"({sysroot / STATE_DIR / CAPTURE_RECORD}): the machine did not crash, or the "
            "crash kernel did not start or stopped before it could mount the root file "
            "system; the console of the crash shows how far it got",
        )
    else:
        verdict = _verdict(test, capture, dump_path)
    _write_json(sysroot / STATE_DIR / TEST_RECORD, asdict(verdict))
    return verdict, True


def _verdict(test: Test, capture: dict[str, object], dump_path: Path) -> Test:
    name = str(capture.get("dump") or "")
    folder = str(dump_path / name) if "/" not in name and name.strip(".") else ""
    if capture.get("ok") is not True or not folder:
        reason = str(capture.get("error") or "the capture failed")
        return replace(test, result="failed", reason=reason, dump=folder)
    found = dumps.read(Path(folder))
    if not found.complete:
        reason = f"the dump in {folder} is not complete now: {found.error or 'no vmcore'}"
        return replace(test, result="failed", reason=reason, dump=folder)
    return replace(test, result="passed", dump=folder)
