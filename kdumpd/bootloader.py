"""Where this machine's boot loader takes the kernel command line: which crashkernel= the
next boot gets, and writing one there.

Three kinds, detected from a sysroot in this order:

- "grubby" (Fedora, RHEL): `grubby --update-kernel=ALL --args=crashkernel=...` edits the
  Boot Loader Specification entries (/boot/loader/entries/*.conf), as kdump-utils does.
- "grub" (Debian, Ubuntu): a drop-in /etc/default/grub.d/kdumpd.cfg that appends to
  GRUB_CMDLINE_LINUX_DEFAULT, as Debian's kdump-tools does with its kdump-tools.cfg,
  then `update-grub`; when /boot/grub/grub.cfg exists (kdump-tools' test too).
- "kernel-install" (systemd-boot, BLS, unified kernel images): /etc/kernel/cmdline, then
  `kernel-install add` for each installed kernel, which writes its entry (or image) again.

Everything here is pure except apply() and run(), which write and run what plan() says.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdumpd import UserError, environment, kernels, reservation

__all__ = [
    "GRUB_DROPIN",
    "KERNEL_CMDLINE",
    "Change",
    "Configured",
    "Setting",
    "apply",
    "configured",
    "detect",
    "difference",
    "gets",
    "plan",
    "run",
]

GRUB_DROPIN = Path("/etc/default/grub.d/kdumpd.cfg")
KERNEL_CMDLINE = Path("/etc/kernel/cmdline")
_GRUB_DEFAULT = Path("/etc/default/grub")
_GRUB_CFG = Path("/boot/grub/grub.cfg")
_BLS_ENTRIES = Path("/boot/loader/entries")
_NAME = "crashkernel="
_DROPIN_HEAD = (
    "# Written by `kdumpd crashkernel --set`; update-grub reads it after /etc/default/grub.\n"
)


@dataclass(frozen=True)
class Setting:
    """One crashkernel= in the boot loader's configuration."""

    path: Path  # as the machine sees it
    line: int  # 1-based
    value: str  # what follows crashkernel=

    def __str__(self) -> str:
        return f"crashkernel={self.value} in {self.path} line {self.line}"


@dataclass(frozen=True)
class Configured:
    """What the next boot's kernel command line gets."""

    kind: str  # "grubby", "grub", "kernel-install"
    values: dict[str, str]  # crashkernel= values by kind, as reservation.crashkernel_values
    settings: tuple[Setting, ...]  # every crashkernel= written in the configuration


@dataclass(frozen=True)
class Change:
    """What `kdumpd crashkernel --set` will do."""

    kind: str
    path: Path | None  # the file written, as the machine sees it; None: a command does it
    text: str  # that file's new content
    diff: tuple[str, ...]  # "- old" and "+ new" lines to show first
    commands: tuple[tuple[str, ...], ...]  # run after the file is written
    elsewhere: tuple[Setting, ...]  # an administrator's crashkernel= this replaces or overrides
    unchanged: bool  # the next boot gets this value already


def _in(sysroot: Path, path: Path) -> Path:
    return sysroot / path.relative_to("/")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _has_program(sysroot: Path, name: str) -> bool:
    try:
        environment.which(sysroot, name)
    except environment.Unreachable:
        return False
    return True


def detect(sysroot: Path) -> str:
    """Which boot loader configuration this machine boots from."""
    if _has_program(sysroot, "grubby"):
        return "grubby"
    if _has_program(sysroot, "update-grub") and _in(sysroot, _GRUB_CFG).is_file():
        return "grub"
    if _in(sysroot, KERNEL_CMDLINE).is_file():
        return "kernel-install"
    raise UserError(
        "found no boot loader configuration to write crashkernel= to: no grubby, no "
        f"update-grub with {_GRUB_CFG}, no {KERNEL_CMDLINE} (with kernel-install, write the "
        f"kernel command line into {KERNEL_CMDLINE} first; elsewhere, add crashkernel= to "
        "the boot loader's kernel command line by hand)"
    )


# --- GRUB: /etc/default/grub and its drop-ins, read as grub-mkconfig's shell reads them --

_ASSIGN = re.compile(r"\s*(?:export\s+)?(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=(.*)")
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _shell_value(text: str, variables: dict[str, str]) -> str:
    """The right side of a shell assignment as sh gives it, for what these files hold:
    single and double quotes, backslashes, $VAR and ${VAR}; unquoted blank ends it."""
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote == "'":
            quote = "" if c == "'" else quote
            out.append("" if c == "'" else c)
        elif c == "$" and (var := _VAR.match(text, i)):
            out.append(variables.get(var.group(1) or var.group(2), ""))
            i = var.end()
            continue
        elif c == "\\" and i + 1 < len(text):
            i += 1
            out.append(text[i])
        elif quote == '"':
            quote = "" if c == '"' else quote
            out.append("" if c == '"' else c)
        elif c in "'\"":
            quote = c
        elif c.isspace():
            break
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _grub_files(sysroot: Path) -> list[Path]:
    """In the order grub-mkconfig sources them: /etc/default/grub, then grub.d/*.cfg."""
    dropins = sorted(_in(sysroot, GRUB_DROPIN.parent).glob("*.cfg"))
    return [_GRUB_DEFAULT, *(Path("/") / p.relative_to(sysroot) for p in dropins)]


def _settings_in(path: Path, text: str, literal: Callable[[str], str]) -> list[Setting]:
    """The crashkernel= words each line of a file sets; literal(line) is the line's words."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for word in literal(line).split():
            if word.startswith(_NAME):
                found.append(Setting(path, number, word[len(_NAME) :]))
    return found


def _grub_literal(line: str) -> str:
    assign = _ASSIGN.fullmatch(line)
    return _shell_value(assign.group(2), {}) if assign else ""


def _grub(files: list[tuple[Path, str]]) -> Configured:
    variables = {"GRUB_CMDLINE_LINUX": "", "GRUB_CMDLINE_LINUX_DEFAULT": ""}
    settings: list[Setting] = []
    for path, text in files:
        for line in text.splitlines():
            if assign := _ASSIGN.fullmatch(line):
                variables[assign.group(1)] = _shell_value(assign.group(2), variables)
        settings += _settings_in(path, text, _grub_literal)
    # grub-mkconfig's 10_linux: linux ... ${GRUB_CMDLINE_LINUX} ${GRUB_CMDLINE_LINUX_DEFAULT}
    line = f"{variables['GRUB_CMDLINE_LINUX']} {variables['GRUB_CMDLINE_LINUX_DEFAULT']}"
    return Configured("grub", reservation.crashkernel_values(line), tuple(settings))


def _grub_texts(sysroot: Path) -> list[tuple[Path, str]]:
    return [(p, t) for p in _grub_files(sysroot) if (t := _read(_in(sysroot, p))) is not None]


# --- kernel-install and grubby: one line of words -----------------------------------------


def _with_value(words: str, value: str) -> str:
    """A command line with every crashkernel= replaced by crashkernel=value."""
    kept = [w for w in words.split() if not w.startswith(_NAME)]
    return " ".join([*kept, _NAME + value])


def _kernel_install(sysroot: Path) -> Configured:
    text = _read(_in(sysroot, KERNEL_CMDLINE)) or ""
    settings = _settings_in(KERNEL_CMDLINE, text, str)
    return Configured("kernel-install", reservation.crashkernel_values(text), tuple(settings))


def _bls_entries(sysroot: Path) -> list[tuple[Path, str, str]]:
    """(entry, its version, its options line) for each Boot Loader Specification entry,
    the newest kernel last."""
    found = []
    for entry in _in(sysroot, _BLS_ENTRIES).glob("*.conf"):
        fields = dict(
            line.split(None, 1) for line in (_read(entry) or "").splitlines() if " " in line
        )
        path = Path("/") / entry.relative_to(sysroot)
        found.append((path, fields.get("version", ""), fields.get("options", "")))
    return sorted(found, key=lambda e: kernels.version_key(e[1]))


def _options_line(sysroot: Path, entry: Path) -> int:
    lines = (_read(_in(sysroot, entry)) or "").splitlines()
    return next((n for n, line in enumerate(lines, 1) if line.startswith("options")), 0)


def _grubby(sysroot: Path) -> Configured:
    entries = _bls_entries(sysroot)
    settings = [
        Setting(path, _options_line(sysroot, path), word[len(_NAME) :])
        for path, _, options in entries
        for word in options.split()
        if word.startswith(_NAME)
    ]
    # The default entry is the newest kernel's: grubby makes each new kernel the default.
    values = reservation.crashkernel_values(entries[-1][2]) if entries else {}
    return Configured("grubby", values, tuple(settings))


def configured(sysroot: Path) -> Configured:
    """The crashkernel= the next boot gets, from the boot loader's configuration."""
    kind = detect(sysroot)
    if kind == "grub":
        return _grub(_grub_texts(sysroot))
    if kind == "kernel-install":
        return _kernel_install(sysroot)
    return _grubby(sysroot)


def gets(values: dict[str, str], value: str) -> bool:
    """Whether a command line with these crashkernel= values reserves as crashkernel=value
    does: its kind is there with that value, and no plain one overrides a ,high."""
    ((kind, _),) = reservation.crashkernel_values(_NAME + value).items()
    return values.get(kind) == value and (kind == "plain" or "plain" not in values)


def plan(sysroot: Path, value: str) -> Change:
    """How to give the next boot crashkernel=value, and what that replaces."""
    now = configured(sysroot)
    differ = tuple(s for s in now.settings if s.value != value)
    if now.kind == "grub":
        old = _read(_in(sysroot, GRUB_DROPIN))
        text = (
            f'{_DROPIN_HEAD}GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT '
            f'{_NAME}{value}"\n'
        )
        diff = [f"{GRUB_DROPIN}:"]
        diff += [f"- {line}" for line in (old or "").splitlines() if not line.startswith("#")]
        diff += [f"+ {line}" for line in text.splitlines() if not line.startswith("#")]
        return Change(
            "grub",
            GRUB_DROPIN,
            text,
            tuple(diff),
            (("update-grub",),),
            tuple(s for s in now.settings if s.path != GRUB_DROPIN),
            gets(now.values, value) and old == text,
        )
    if now.kind == "kernel-install":
        old = _read(_in(sysroot, KERNEL_CMDLINE)) or ""
        text = _with_value(old, value) + "\n"
        images = {
            v: kernels.files_for(v, sysroot).image for v in kernels.installed_versions(sysroot)
        }
        return Change(
            "kernel-install",
            KERNEL_CMDLINE,
            text,
            (f"{KERNEL_CMDLINE}:", f"- {' '.join(old.split())}", f"+ {text.strip()}"),
            tuple(
                ("kernel-install", "add", v, str(Path("/") / image.relative_to(sysroot)))
                for v, image in images.items()
            ),
            differ,
            gets(now.values, value),
        )
    diff = []
    for path, _, options in _bls_entries(sysroot):
        if (new := _with_value(options, value)) != " ".join(options.split()):
            diff += [f"{path}:", f"- options {options}", f"+ options {new}"]
    return Change(
        "grubby",
        None,
        "",
        tuple(diff),
        (("grubby", "--update-kernel=ALL", f"--args={_NAME}{value}"),),
        differ,
        gets(now.values, value) and not diff,
    )


def run(command: tuple[str, ...]) -> None:
    """Run one of plan()'s commands, its output on the terminal."""
    try:
        done = subprocess.run(command, check=False)
    except OSError as e:
        raise UserError(f"cannot run {command[0]}: {e.strerror}") from None
    if done.returncode != 0:
        raise UserError(f"{' '.join(command)} failed (exit status {done.returncode})")


def apply(change: Change, sysroot: Path, runner: Callable[[tuple[str, ...]], None] = run) -> None:
    """Write the file, then run the commands that make the boot loader read it."""
    if change.path is not None:
        path = _in(sysroot, change.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.kdumpd-new")
        tmp.write_text(change.text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    for command in change.commands:
        runner(command)


def _shown(values: dict[str, str]) -> str:
    return " ".join(_NAME + v for v in values.values()) or "no crashkernel="


def difference(cmdline: str, next_boot: Configured) -> str:
    """What `kdumpd status` says when the reservation in effect (the running kernel's
    command line) is not the one configured for the next boot; "" when they agree."""
    now = reservation.crashkernel_values(cmdline)
    if now == next_boot.values:
        return ""
    where = ", ".join(dict.fromkeys(str(s.path) for s in next_boot.settings)) or next_boot.kind
    return f"{_shown(next_boot.values)} ({where}); {_shown(now)} in effect now: a reboot applies it"
