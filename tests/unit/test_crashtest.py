"""kdumpd/crashtest.py: the pending test, the crash kernel's record, the verdict after."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kdumpd import capture, crashtest
from kdumpd.config import Config

BOOT = "2b3c5d21-7a4f-4c0e-9a77-0d1f1b6e9c42"
NEXT_BOOT = "9f1e2d3c-0000-4c0e-9a77-0d1f1b6e9c42"
FOLDER = "2026-12-01-172123-6.1.0-50-amd64"


def _dump(dump_path: Path, complete: bool = True) -> Path:
    folder = dump_path / FOLDER
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text('{"kernel_version": "6.1.0-50-amd64"}')
    (folder / ("vmcore" if complete else "vmcore.incomplete")).write_bytes(b"\0" * 4096)
    return folder


def _records(root: Path) -> Path:
    return root / crashtest.STATE_DIR


def test_a_pending_test_stays_pending_in_its_own_boot(tmp_path: Path) -> None:
    test = crashtest.pending(tmp_path, BOOT, 1_764_583_810_000_000)
    assert test.result == "pending" and len(test.id) == 32
    assert crashtest.decide(tmp_path, BOOT, tmp_path / "crash") == (test, False)
    assert crashtest.load(tmp_path) == test


def test_passed_when_the_tests_capture_saved_a_complete_dump(tmp_path: Path) -> None:
    test = crashtest.pending(tmp_path, BOOT, 1)
    folder = _dump(tmp_path / "crash")
    # In the crash kernel, the dump file system may be mounted elsewhere: the name counts.
    crashtest.capture_record(tmp_path, True, "", Path("/run/kdumpd/target") / FOLDER)
    verdict, decided = crashtest.decide(tmp_path, NEXT_BOOT, tmp_path / "crash")
    assert decided and verdict is not None
    assert (verdict.id, verdict.result, verdict.dump) == (test.id, "passed", str(folder))
    # Decided once: the next start reads the verdict, and does not announce it again.
    assert crashtest.decide(tmp_path, NEXT_BOOT, tmp_path / "crash") == (verdict, False)


def test_failed_with_the_crash_kernels_reason(tmp_path: Path) -> None:
    crashtest.pending(tmp_path, BOOT, 1)
    error = "[Errno 1] Operation not permitted: '/var/crash/2026-12-01-172123-6.1.0-50-amd64'"
    crashtest.capture_record(tmp_path, False, error, None)
    verdict, decided = crashtest.decide(tmp_path, NEXT_BOOT, tmp_path / "crash")
    assert decided and verdict is not None
    assert (verdict.result, verdict.reason, verdict.dump) == ("failed", error, "")


def test_failed_when_the_crash_kernel_recorded_nothing_for_this_test(tmp_path: Path) -> None:
    crashtest.pending(tmp_path, BOOT, 1)
    crashtest.capture_record(tmp_path, True, "", tmp_path / FOLDER)  # an earlier capture's
    crashtest.pending(tmp_path, BOOT, 2)  # the test after it
    verdict, _ = crashtest.decide(tmp_path, NEXT_BOOT, tmp_path / "crash")
    assert verdict is not None and verdict.result == "failed"
    assert "recorded no capture for this test" in verdict.reason


def test_failed_when_the_dump_is_gone_or_incomplete_by_now(tmp_path: Path) -> None:
    crashtest.pending(tmp_path, BOOT, 1)
    _dump(tmp_path / "crash", complete=False)
    crashtest.capture_record(tmp_path, True, "", tmp_path / FOLDER)
    verdict, _ = crashtest.decide(tmp_path, NEXT_BOOT, tmp_path / "crash")
    assert verdict is not None and verdict.result == "failed"
    assert "is not complete now" in verdict.reason


def test_a_capture_with_no_test_pending_records_no_test(tmp_path: Path) -> None:
    crashtest.capture_record(tmp_path, True, "", tmp_path / FOLDER)
    record = json.loads((_records(tmp_path) / crashtest.CAPTURE_RECORD).read_text())
    assert record == {"test_id": "", "ok": True, "error": "", "dump": FOLDER}
    assert crashtest.decide(tmp_path, NEXT_BOOT, tmp_path / "crash") == (None, False)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"[]",
        b'{"id": 1}',
        b'{"id": "x", "time_usec": "1", "boot_id": "b", "result": "pending"}',
        b'{"id": "x", "time_usec": 1, "boot_id": "b", "result": "maybe"}',
        b"{" * 100_000,
        b'{"id": "' + b"x" * (crashtest.RECORD_MAX + 1) + b'"}',
    ],
)
def test_a_record_that_is_not_ours_is_no_test(tmp_path: Path, content: bytes) -> None:
    _records(tmp_path).mkdir(parents=True)
    (_records(tmp_path) / crashtest.TEST_RECORD).write_bytes(content)
    assert crashtest.load(tmp_path) is None
    assert crashtest.decide(tmp_path, NEXT_BOOT, tmp_path / "crash") == (None, False)


def test_a_fifo_or_a_symlink_is_not_read(tmp_path: Path) -> None:
    _records(tmp_path).mkdir(parents=True)
    os.mkfifo(_records(tmp_path) / crashtest.TEST_RECORD)
    assert crashtest.load(tmp_path) is None
    (_records(tmp_path) / crashtest.TEST_RECORD).unlink()
    real = tmp_path / "elsewhere.json"
    crashtest.pending(tmp_path, BOOT, 1)
    (_records(tmp_path) / crashtest.TEST_RECORD).rename(real)
    (_records(tmp_path) / crashtest.TEST_RECORD).symlink_to(real)
    assert crashtest.load(tmp_path) is None


def test_a_capture_record_naming_another_place_is_not_followed(tmp_path: Path) -> None:
    test = crashtest.pending(tmp_path, BOOT, 1)
    record = {"test_id": test.id, "ok": True, "error": "", "dump": "../../etc"}
    (_records(tmp_path) / crashtest.CAPTURE_RECORD).write_text(json.dumps(record))
    verdict, _ = crashtest.decide(tmp_path, NEXT_BOOT, tmp_path / "crash")
    assert verdict is not None and verdict.result == "failed" and verdict.dump == ""


def test_capture_save_records_what_it_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """capture.save in the crash kernel: a dump path it cannot write is the record's error."""
    monkeypatch.setattr(capture, "VMCORE", tmp_path / "vmcore-source")
    (tmp_path / "vmcore-source").write_bytes(b"not an ELF core")
    written: list[tuple[bool, str, Path | None]] = []
    monkeypatch.setattr(
        crashtest,
        "capture_record",
        lambda root, ok, error, folder: written.append((ok, error, folder)),
    )
    monkeypatch.setattr(os, "sync", lambda: None)
    assert capture.save(Config(dump_path=tmp_path / "crash")) is False
    [(ok, error, folder)] = written
    assert not ok and error and folder is None


def test_with_the_capture_initramfs_the_records_must_be_on_a_file_system_it_mounts(
    tmp_path: Path,
) -> None:
    (tmp_path / "var/lib/kdumpd").mkdir(parents=True)
    assert crashtest.unreachable(tmp_path, "initramfs", tmp_path / "crash") == ""
    elsewhere = tmp_path / "other-root"
    (elsewhere / "var/lib").mkdir(parents=True)
    (elsewhere / "var/lib/kdumpd").symlink_to("/proc")  # another file system: a separate /var
    reason = crashtest.unreachable(elsewhere, "initramfs", elsewhere / "crash")
    assert "does not mount" in reason and str(elsewhere / "var/lib/kdumpd") in reason
    assert crashtest.unreachable(elsewhere, "initramfs", Path("/proc")) == ""  # the dump fs
    assert crashtest.unreachable(elsewhere, "system", elsewhere / "crash") == ""
