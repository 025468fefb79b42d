"""kdumpd/journal.py speaks journald's native protocol and sd_notify's itself."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdumpd import journal


def parse(data: bytes) -> dict[str, str]:
    """As journald reads a native datagram (journald-native.c)."""
    fields: dict[str, str] = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            data = rest
        else:
            key = line
            (size,) = struct.unpack("<Q", rest[:8])
            value, data = rest[8 : 8 + size], rest[8 + size :]
            assert data[:1] == b"\n"
            data = data[1:]
        fields[key.decode()] = value.decode()
    return fields


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "socket")
    s.bind(path)
    s.settimeout(5)
    yield s, path
    s.close()


def test_an_entry_reaches_the_journal_whole(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, path = listener
    monkeypatch.setattr(journal, "_JOURNAL_SOCKET", path)
    journal.send(
        journal.ERR,
        "config: line 3\nsecond line = with an equals sign",
        journal.MSG_CONFIG_ERROR,
        config_line=3,
        kernel_cmdline="root=/dev/vda rw",
        absent=None,
    )
    assert parse(s.recv(1 << 16)) == {
        "MESSAGE": "config: line 3\nsecond line = with an equals sign",
        "PRIORITY": "3",
        "SYSLOG_IDENTIFIER": "kdumpd",
        "CONFIG_LINE": "3",
        "KERNEL_CMDLINE": "root=/dev/vda rw",
        "MESSAGE_ID": journal.MSG_CONFIG_ERROR,
    }


def test_a_huge_value_is_cut_not_lost(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, path = listener
    monkeypatch.setattr(journal, "_JOURNAL_SOCKET", path)
    journal.send(journal.INFO, "x" * (1 << 20))
    assert parse(s.recv(1 << 20))["MESSAGE"] == "x" * journal.FIELD_MAX


def test_without_a_journal_the_words_go_to_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(journal, "_JOURNAL_SOCKET", str(tmp_path / "none"))
    journal.send(journal.INFO, "crash kernel loaded")
    assert capsys.readouterr().err == "kdumpd: crash kernel loaded\n"


def test_notify_on_a_path_and_on_an_abstract_socket(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    journal.notify(READY="1", STATUS="crash kernel 6.1.0-50-amd64 loaded")
    assert s.recv(4096) == b"READY=1\nSTATUS=crash kernel 6.1.0-50-amd64 loaded"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind(f"\0kdumpd-test-{id(abstract)}")
        abstract.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", f"@kdumpd-test-{id(abstract)}")
        journal.notify(WATCHDOG="1")
        assert abstract.recv(4096) == b"WATCHDOG=1"
    monkeypatch.setenv("NOTIFY_SOCKET", path + ".gone")
    journal.notify(STOPPING="1")  # systemd went away: nothing to tell, nothing raised
