"""Listing dumps from folders anyone may have made strange: every hostile input is that
entry's Error, the other dumps are listed, and every field fits its D-Bus type."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gi.repository import GLib

from kdumpd import dumps

GOOD = {
    "time_usec": 1_795_740_000_000_000,
    "kernel_version": "6.1.0-28-amd64",
    "panic_message": "sysrq triggered crash",
    "error": "",
}


def _folder(root: Path, name: str, metadata: bytes | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / dumps.VMCORE).write_bytes(b"KDUMP   " + b"x" * 8)
    if metadata is not None:
        (folder / dumps.METADATA).write_bytes(metadata)
    return folder


def _good(root: Path, name: str = "good") -> Path:
    return _folder(root, name, json.dumps(GOOD).encode())


def _fits_dbus(entry: dict[str, Any]) -> None:
    """What dbus_service does with each entry: a GLib.Variant of its FIELD_TYPES type."""
    assert set(entry) == set(dumps.FIELD_TYPES)
    for key, value in entry.items():
        assert GLib.Variant(dumps.FIELD_TYPES[key], value).unpack() == value, key


def _listed(root: Path, bad: str) -> dict[str, Any]:
    """Scan root, which holds `good` and `bad`: the good one as written, the bad one's entry
    returned once it has been checked to fit D-Bus."""
    found = {d.path.name: d.as_dict() for d in dumps.scan(root)}
    assert set(found) == {"good", bad}
    assert found["good"] == {
        "Path": str(root / "good"),
        "TimeUsec": GOOD["time_usec"],
        "KernelVersion": GOOD["kernel_version"],
        "SizeBytes": 16,
        "Complete": True,
        "PanicMessage": GOOD["panic_message"],
        "Error": "",
        "Location": "",
    }
    for entry in found.values():
        _fits_dbus(entry)
    return found[bad]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Infinity", "Infinity is not a JSON number"),
        ("-Infinity", "-Infinity is not a JSON number"),
        ("NaN", "NaN is not a JSON number"),
        ("1e400", "time_usec: inf is not a time in µs since 1970"),
        ("-5", "time_usec: -5 is not a time in µs since 1970"),
        (str(2**64), f"time_usec: {2**64} is not a time in µs since 1970"),
        (str(dumps.MAX_USEC), f"time_usec: {dumps.MAX_USEC} is not a time in µs since 1970"),
        ("1.5", "time_usec: 1.5 is not a time in µs since 1970"),
        ("true", "time_usec: True is not a time in µs since 1970"),
        ('"1795740000000000"', "time_usec: '1795740000000000' is not a time in µs since 1970"),
        ("9" * 5000, "is not valid JSON"),
    ],
)
def test_a_time_that_is_not_a_time_is_an_error(tmp_path: Path, value: str, expected: str) -> None:
    _good(tmp_path)
    text = json.dumps({**GOOD, "time_usec": 0}).replace('"time_usec": 0', f'"time_usec": {value}')
    folder = _folder(tmp_path, "bad", text.encode())
    entry = _listed(tmp_path, "bad")
    assert expected in entry["Error"]
    assert entry["TimeUsec"] == os.stat(folder).st_mtime_ns // 1000
    assert entry["Complete"] is True


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("kernel_version", 6, "metadata.json: kernel_version: 6 is not a string"),
        ("panic_message", ["a"], "metadata.json: panic_message: ['a'] is not a string"),
        ("panic_message", "before\0after", "metadata.json: panic_message: contains a NUL byte"),
        ("kernel_version", "\ud800", "metadata.json: kernel_version: is not valid Unicode"),
        ("error", {"a": 1}, "metadata.json: error: {'a': 1} is not a string"),
        ("location", 5, "metadata.json: location: 5 is not a string"),
        ("size_bytes", -1, "metadata.json: size_bytes: -1 is not a size in bytes"),
        ("size_bytes", 1 << 64, f"metadata.json: size_bytes: {1 << 64} is not a size in bytes"),
        ("complete", "yes", "metadata.json: complete: 'yes' is not true or false"),
    ],
)
def test_a_field_that_does_not_fit_dbus_is_an_error(
    tmp_path: Path, field: str, value: Any, expected: str
) -> None:
    _good(tmp_path)
    _folder(tmp_path, "bad", json.dumps({**GOOD, field: value}).encode())
    entry = _listed(tmp_path, "bad")
    assert entry["Error"] == expected
    others = {"KernelVersion": "kernel_version", "PanicMessage": "panic_message"}
    for key, name in others.items():  # the fields that are fine are still shown
        assert entry[key] == ("" if name == field else GOOD[name])


def _deep(path: Path) -> None:
    path.write_text('{"time_usec": ' + "[" * 30000 + "]" * 30000 + "}")


def _huge(path: Path) -> None:
    path.write_text(json.dumps(GOOD) + " " * dumps.METADATA_MAX)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.write_bytes(b'{"kernel_version": "\xff"}'), "metadata.json is not UTF-8 text"),
        (lambda p: p.write_text("[1, 2]"), "metadata.json is not a JSON object"),
        (lambda p: p.write_text('"text"'), "metadata.json is not a JSON object"),
        (lambda p: p.write_text("null"), "metadata.json is not a JSON object"),
        (lambda p: p.write_text('{"time_usec": '), "metadata.json is not valid JSON"),
        (_deep, "metadata.json is nested too deeply"),
        (_huge, "metadata.json is larger than 64 KiB"),
        (_fifo, "metadata.json is a FIFO, not a regular file"),
        (_zero, "metadata.json is a symbolic link, not a regular file"),
        (_directory, "metadata.json is a directory, not a regular file"),
    ],
)
def test_a_metadata_file_that_is_not_small_json_is_an_error(
    tmp_path: Path, make: Callable[[Path], None], expected: str
) -> None:
    _good(tmp_path)
    make(_folder(tmp_path, "bad") / dumps.METADATA)
    entry = _listed(tmp_path, "bad")
    assert entry["Error"].startswith(expected), entry["Error"]
    assert (entry["KernelVersion"], entry["PanicMessage"]) == ("", "")


def test_a_metadata_symlink_to_a_root_only_file_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({**GOOD, "panic_message": "the root password is hunter2"}))
    secret.chmod(0o600)
    _good(tmp_path / "crash")
    (_folder(tmp_path / "crash", "bad") / dumps.METADATA).symlink_to(secret)
    entry = _listed(tmp_path / "crash", "bad")
    assert entry["Error"] == "metadata.json is a symbolic link, not a regular file"
    assert "hunter2" not in json.dumps(entry)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.symlink_to("/dev/zero"), "vmcore is a symbolic link, not a regular file"),
        (_fifo, "vmcore is a FIFO, not a regular file"),
        (_directory, "vmcore is a directory, not a regular file"),
    ],
)
def test_a_vmcore_that_is_not_a_file_is_an_error_and_not_complete(
    tmp_path: Path, make: Callable[[Path], None], expected: str
) -> None:
    _good(tmp_path)
    folder = _folder(tmp_path, "bad", json.dumps(GOOD).encode())
    (folder / dumps.VMCORE).unlink()
    make(folder / dumps.VMCORE)
    entry = _listed(tmp_path, "bad")
    assert entry["Error"] == expected
    assert (entry["Complete"], entry["SizeBytes"]) == (False, 0)


def test_the_capture_error_comes_first_and_an_unfinished_capture_says_so(tmp_path: Path) -> None:
    _good(tmp_path)
    failed = _folder(tmp_path, "bad", json.dumps({**GOOD, "error": "disk full"}).encode())
    (failed / dumps.VMCORE).rename(failed / dumps.INCOMPLETE)
    (failed / dumps.DMESG).symlink_to("/dev/zero")  # not a file the listing looks at
    assert _listed(tmp_path, "bad")["Error"] == "disk full"
    (failed / dumps.METADATA).unlink()  # metadata.json is written last
    entry = _listed(tmp_path, "bad")
    assert (entry["Error"], entry["Complete"], entry["SizeBytes"]) == (
        "capture did not finish",
        False,
        16,
    )


def test_a_folder_mtime_out_of_range_gives_time_0(tmp_path: Path) -> None:
    _good(tmp_path)
    folder = _folder(tmp_path, "bad")
    os.utime(folder, ns=(0, -1_000_000_000))
    assert _listed(tmp_path, "bad")["TimeUsec"] == 0


def test_symlinked_folders_and_names_that_are_not_utf8_are_not_dumps(tmp_path: Path) -> None:
    _good(tmp_path)
    _good(tmp_path / "elsewhere", "target")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere" / "target")
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"\xff-6.1.0"))
    (Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"\xff-6.1.0"))) / "vmcore").touch()
    (tmp_path / "elsewhere").rename(tmp_path / ".hidden")
    assert [d.path.name for d in dumps.scan(tmp_path)] == ["good"]


def _scan_as_the_daemon(root: Path) -> list[dict[str, Any]]:
    """dumps.scan in a process with only CAP_SYS_BOOT, as kdumpd.service runs it: root
    without CAP_DAC_OVERRIDE cannot read a mode-000 folder, as nobody else can."""
    as_daemon = ["setpriv", "--bounding-set=-all,+sys_boot"] if os.geteuid() == 0 else []
    code = (
        "import json, sys; from pathlib import Path; from kdumpd import dumps; "
        "print(json.dumps([d.as_dict() for d in dumps.scan(Path(sys.argv[1]))]))"
    )
    result = subprocess.run(
        [*as_daemon, sys.executable, "-c", code, str(root)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    found: list[dict[str, Any]] = json.loads(result.stdout)
    return found


def test_an_unreadable_folder_is_an_error(tmp_path: Path) -> None:
    _good(tmp_path)
    _good(tmp_path, "bad").chmod(0)
    found = {Path(d["Path"]).name: d for d in _scan_as_the_daemon(tmp_path)}
    assert found["good"]["Error"] == ""
    assert found["bad"]["Error"] == "cannot be read: Permission denied"
    assert found["bad"]["TimeUsec"] == os.stat(tmp_path / "bad").st_mtime_ns // 1000
    for entry in found.values():
        _fits_dbus(entry)


def test_a_dump_path_that_cannot_be_listed_lists_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    for name in ("file", "fifo", "zero", "missing"):
        assert dumps.scan(tmp_path / name) == [], name
    unreadable = tmp_path / "unreadable"
    _good(unreadable)
    unreadable.chmod(0)
    assert _scan_as_the_daemon(unreadable) == []


def test_a_dump_sent_to_a_target_is_listed_from_its_record(tmp_path: Path) -> None:
    """The folder here holds what the crashed machine recorded: where the dump went, its
    size, whether it arrived (its vmcore is on the server)."""
    url = "ssh://kdump@192.0.2.1/srv/dumps/web-1-01234567/2026-12-02-101500-6.1.0-28-amd64"
    record = {**GOOD, "location": url, "size_bytes": 123456, "complete": True}
    folder = tmp_path / "sent"
    folder.mkdir()
    (folder / dumps.METADATA).write_text(json.dumps(record))
    (entry,) = [d.as_dict() for d in dumps.scan(tmp_path)]
    assert (entry["Location"], entry["Complete"], entry["SizeBytes"]) == (url, True, 123456)
    failed = {
        **record,
        "complete": False,
        "size_bytes": 0,
        "error": "192.0.2.1: connection refused",
    }
    (folder / dumps.METADATA).write_text(json.dumps(failed))
    (entry,) = [d.as_dict() for d in dumps.scan(tmp_path)]
    assert not entry["Complete"] and entry["Error"] == "192.0.2.1: connection refused"
    # A record that says nothing of how it went did not arrive.
    (folder / dumps.METADATA).write_text(json.dumps({**GOOD, "location": url}))
    (entry,) = [d.as_dict() for d in dumps.scan(tmp_path)]
    assert not entry["Complete"] and entry["Error"] == "capture did not finish"
