"""The manual pages kdumpd(8) and kdumpd.yaml(5), generated at package build.

kdumpd(8) is made from the argparse parser that `--help` prints, kdumpd.yaml(5) from the
shipped config's comments (conf/kdumpd.yaml), checked against the keys config.parse
accepts; so neither can say something the program does not. Run from a source tree:
python3 -m kdumpd.manpage CONF_YAML OUTDIR.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from kdumpd import __version__, capture, cli, config, crashtest, dumps

_PROSE = """\
kdumpd keeps a crash kernel loaded at all times, so that when the running kernel \
panics the machine boots into the crash kernel, saves a dump of the dead kernel's \
memory with makedumpfile(8), and comes back. It reloads the crash kernel by itself \
after kernel and initramfs updates and CPU or memory hotplug, and a broken config or a \
kernel the loader refuses keeps (or at once restores) the last good crash kernel.

The daemon, `kdumpd serve`, is started by kdumpd.service and owns org.kdumpd.Kdump1 on \
the system bus. The other commands ask it over D-Bus, or work offline."""


def _escape(text: str) -> str:
    """Plain text as roff: backslashes, hyphens and quotes literal, no line read as a
    request, `code` in bold."""
    text = text.replace("\\", "\\e").replace("-", "\\-").replace("'", "\\(aq")
    text = re.sub(r"`([^`]*)`", r"\\fB\1\\fR", text)
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.MULTILINE)


def _header(name: str, section: int, manual: str) -> str:
    # SOURCE_DATE_EPOCH: the package builds are reproducible.
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    return f'.TH "{name.upper()}" "{section}" "{date}" "kdumpd {__version__}" "{manual}"\n'


def _paragraphs(text: str) -> str:
    return "\n.PP\n".join(_escape(p) for p in text.split("\n\n")) + "\n"


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in --help's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps[name], sub) for name, sub in action.choices.items()]
    return []


def _options(parser: argparse.ArgumentParser, with_help: bool) -> str:
    out = ""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or (
            isinstance(action, argparse._HelpAction) and not with_help
        ):
            continue
        if action.option_strings:
            term = ", ".join(rf"\fB{_escape(o)}\fR" for o in action.option_strings)
            if action.nargs != 0:
                term += rf" \fI{_escape(str(action.metavar or action.dest.upper()))}\fR"
        else:
            term = rf"\fI{_escape(str(action.metavar or action.dest))}\fR"
        # As argparse expands help (%(default)s ...).
        text = (action.help or "") % dict(vars(action), prog=parser.prog)
        out += f".TP\n{term}\n{_escape(text)}\n"
    return out


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage: ").split())


def command_page(parser: argparse.ArgumentParser) -> str:
    """kdumpd(8)."""
    subs = _subcommands(parser)
    page = _header("kdumpd", 8, "System Administration")
    page += ".SH NAME\nkdumpd \\- keep a crash kernel loaded, save a dump when the kernel panics\n"
    page += ".SH SYNOPSIS\n"
    page += "\n.br\n".join(_escape(_usage(sub)) for _, _, sub in subs) + "\n"
    page += ".SH DESCRIPTION\n" + _paragraphs(_PROSE)
    page += ".PP\n" + _escape(parser.description or "") + "\n"
    page += ".SH COMMANDS\n"
    for name, text, sub in subs:
        page += f".SS {_escape(name)}\n{_escape(_usage(sub))}\n.PP\n{_escape(text)}\n"
        page += _options(sub, with_help=False)
    page += ".SH OPTIONS\n" + _options(parser, with_help=True)
    page += ".PP\n" + _escape("Every command takes -h too: its own help.") + "\n"
    page += ".SH EXIT STATUS\n"
    for code, what in (
        (cli.EXIT_OK, "success (status, reload: a crash kernel is loaded; unload: none is)"),
        (cli.EXIT_ERROR, "an error, said on standard error (unload: a crash kernel is loaded)"),
        (cli.EXIT_NOT_LOADED, "status, reload: no crash kernel is loaded"),
    ):
        page += f".TP\n{code}\n{_escape(what)}\n"
    page += ".SH FILES\n"
    for path, what in (
        (config.DEFAULT_PATH, "the configuration, see kdumpd.yaml(5)"),
        (dumps.DEFAULT_PATH, "saved dumps (dump_path), one folder each"),
        (Path("/") / capture.ANNOUNCED, "the dumps announced already"),
        (Path("/") / crashtest.STATE_DIR / crashtest.TEST_RECORD, "the last kdumpd test"),
        (
            Path("/") / crashtest.STATE_DIR / crashtest.CAPTURE_RECORD,
            "what the crash kernel's last capture did, for the test's verdict",
        ),
    ):
        page += f".TP\n{_escape(str(path))}\n{_escape(what)}\n"
    page += ".SH SEE ALSO\n"
    page += _escape(
        "kdumpd.yaml(5), systemctl(1), busctl(1), journalctl(1), makedumpfile(8), "
        "/usr/share/doc/kdumpd/README.md"
    )
    return page + "\n"


def _config_entries(text: str) -> tuple[str, list[tuple[list[tuple[str, str]], list[str]]]]:
    """The shipped config's opening comment, and each group of key lines (key, default)
    with the comment lines just above it."""
    intro, _, rest = text.partition("\n\n")
    entries: list[tuple[list[tuple[str, str]], list[str]]] = []
    comment: list[str] = []
    for line in rest.splitlines():
        if line.startswith("#"):
            comment.append(line.removeprefix("#").removeprefix(" "))
        elif key := re.match(r"(\w+):\s*(.*)", line):
            if comment or not entries:
                entries.append(([], comment))
            entries[-1][0].append((key[1], key[2]))
            comment = []
        elif line.strip():
            raise ValueError(f"not a comment nor a key: {line!r}")
    return "\n".join(c.removeprefix("# ") for c in intro.splitlines()), entries


def _comment(lines: list[str]) -> str:
    """Comment lines as roff: indented ones (a list in the comment) keep their lines."""
    out = ""
    for line in lines:
        out += (".br\n" if line.startswith(" ") else "") + _escape(line.strip()) + "\n"
    return out


def config_page(shipped: str) -> str:
    """kdumpd.yaml(5), from the shipped config's text."""
    intro, entries = _config_entries(shipped)
    keys = [k for group, _ in entries for k, _ in group]
    if sorted(keys) != sorted(config._FIELDS):
        raise ValueError(
            f"the shipped config documents {sorted(keys)}, config.parse accepts "
            f"{sorted(config._FIELDS)}"
        )
    page = _header("kdumpd.yaml", 5, "File Formats")
    page += ".SH NAME\nkdumpd.yaml \\- kdumpd configuration\n"
    page += f".SH SYNOPSIS\n{_escape(str(config.DEFAULT_PATH))}\n"
    page += ".SH DESCRIPTION\n" + _escape(intro) + "\n"
    page += ".PP\nA YAML mapping of the keys below; each line shows the key with its default.\n"
    page += ".SH KEYS\n"
    for group, lines in entries:
        term = ", ".join(rf"\fB{_escape(k)}\fR: {_escape(v)}" for k, v in group)
        page += f".TP\n{term}\n{_comment(lines)}"
    page += ".SH SEE ALSO\nkdumpd(8)\n"
    return page


def main(argv: list[str]) -> int:
    shipped, outdir = Path(argv[0]), Path(argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "kdumpd.8").write_text(command_page(cli.parser()))
    (outdir / "kdumpd.yaml.5").write_text(config_page(shipped.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
