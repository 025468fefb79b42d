"""conf/kdumpd.catalog: one entry per MESSAGE_ID, in a form journalctl accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from kdumpd import journal

CATALOG = Path(__file__).parents[2] / "conf/kdumpd.catalog"


def _message_ids() -> set[str]:
    return {v for k, v in vars(journal).items() if k.startswith("MSG_")}


def test_one_entry_per_message_id() -> None:
    # An entry starts with "-- ID" (then, optionally, a language); nothing else may start so.
    ids = [line.split()[1] for line in CATALOG.read_text().splitlines() if line.startswith("-- ")]
    assert sorted(ids) == sorted(_message_ids())
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_journalctl_reads_every_entry(tmp_path: Path) -> None:
    """As the packages' trigger does it (journalctl --update-catalog), into a private root."""
    catalogs = tmp_path / "usr/lib/systemd/catalog"
    catalogs.mkdir(parents=True)
    shutil.copy(CATALOG, catalogs)
    update = subprocess.run(
        ["journalctl", f"--root={tmp_path}", "--update-catalog"], capture_output=True, text=True
    )
    assert update.returncode == 0 and update.stderr == "", update.stderr
    listed = subprocess.run(
        ["journalctl", f"--root={tmp_path}", "--list-catalog"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # "ID kdumpd: Subject" for each entry: Defined-By and Subject were read.
    subjects = dict(line.split(" ", 1) for line in listed.splitlines())
    assert set(subjects) == _message_ids()
    assert all(re.fullmatch(r"kdumpd: \S.*", s) for s in subjects.values()), subjects
    dumped = subprocess.run(
        ["journalctl", f"--root={tmp_path}", "--dump-catalog"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "The panic message was: @PANIC_MESSAGE@" in dumped  # the body came through
