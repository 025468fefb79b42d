"""kdumpd(8) and kdumpd.yaml(5) say what --help and the shipped config say, and render
cleanly (as lintian checks them: man --warnings)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdumpd import config, manpage

ROOT = Path(__file__).parents[2]
SHIPPED = ROOT / "conf/kdumpd.yaml"


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated as the package builds do."""
    out = tmp_path_factory.mktemp("man")
    subprocess.run(
        [sys.executable, "-m", "kdumpd.manpage", str(SHIPPED), str(out)], cwd=ROOT, check=True
    )
    return out


def _render(page: Path) -> tuple[str, str]:
    """The page as man shows it (text), and man's and groff's warnings."""
    env = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80", MAN_KEEP_FORMATTING="")
    shown = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", str(page)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    text = re.sub(r".\x08", "", shown.stdout)  # overstrike bold and underline
    # man breaks lines at hyphens; the words are what counts
    return re.sub(r"\u2010\n\s*", "", text), shown.stderr


def _help(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "kdumpd.cli", *args, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        env=dict(os.environ, COLUMNS="200"),
    ).stdout


def test_the_command_page_names_what_help_shows(pages: Path) -> None:
    text, warnings = _render(pages / "kdumpd.8")
    assert warnings == ""
    assert "-h, --help" in text and "Every command takes -h too" in text
    words = " ".join(text.split())
    commands = re.search(r"\{([a-z,-]+)\}", _help())
    assert commands is not None
    summaries = re.findall(r"^    ([a-z-]+)\s{2,}(.+)$", _help(), flags=re.MULTILINE)
    assert [c for c, _ in summaries] == commands[1].split(",")
    assert all(summary in words for _, summary in summaries)
    for command in commands[1].split(","):
        assert f"kdumpd {command}" in words, command
        shown = _help(command)
        # the command's own part of the page: up to the next heading
        part = re.split(r"\n {0,3}(?=\S)", text.split(f"\n   {command}\n", 1)[1], maxsplit=1)[0]
        for option in set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", shown)) - {"-h", "--help"}:
            assert option in part, (command, option)
        for line in shown.splitlines():  # every option's help text, as --help gives it
            if help_text := re.fullmatch(r"  (?:-\S+(?: \S+)?|[A-Z]+)\s{2,}(.+)", line):
                assert help_text[1] in words, line


def test_the_config_page_names_every_key_and_default(pages: Path) -> None:
    text, warnings = _render(pages / "kdumpd.yaml.5")
    assert warnings == ""
    keys = re.findall(r"^(\w+): (.*)$", SHIPPED.read_text(), flags=re.MULTILINE)
    assert sorted(k for k, _ in keys) == sorted(config._FIELDS)
    for key, default in keys:
        assert f"{key}: {default}" in text, key


def test_a_key_the_shipped_config_does_not_document_stops_the_build() -> None:
    undocumented = SHIPPED.read_text().replace("keep_dumps: 5\n", "")
    with pytest.raises(ValueError, match="keep_dumps"):
        manpage.config_page(undocumented)
