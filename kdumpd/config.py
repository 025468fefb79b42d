"""The YAML configuration: every key optional, every problem reported with file, line and key."""

from __future__ import annotations

import dataclasses
import reprlib
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdumpd import safefile, target
from kdumpd.sizes import SizeError, parse_size

DEFAULT_PATH = Path("/etc/kdumpd/kdumpd.yaml")
DEFAULT_SSH_KEY = Path("/etc/kdumpd/id_ed25519")
# The config is a few lines: anything bigger or deeper is a mistake, and reading or
# composing it must not cost the daemon its memory or its stack.
MAX_BYTES = 1 << 20
MAX_DEPTH = 20

COMPRESSIONS = ("lzo", "zstd", "zlib", "none")
FINAL_ACTIONS = ("reboot", "poweroff", "halt")
FAILURE_ACTIONS = ("reboot", "poweroff", "shell")


@dataclass(frozen=True)
class Config:
    path: Path = DEFAULT_PATH
    kernel: str = "running"
    kernel_image: Path | None = None
    initrd: Path | None = None
    cmdline_remove: tuple[str, ...] = ()
    cmdline_append: tuple[str, ...] = ()
    dump_path: Path = Path("/var/crash")
    dump_level: int = 31
    compression: str = "lzo"
    makedumpfile_args: tuple[str, ...] = ()
    min_free_space: int = 64 << 20
    keep_dumps: int = 5
    final_action: str = "reboot"
    failure_action: str = "reboot"
    min_reservation: int = 0
    target: target.Target | None = None
    ssh_key: Path = DEFAULT_SSH_KEY
    # The line of each key given, for problems found after parsing (ssh_key_problem).
    lines: Mapping[str, int] = dataclasses.field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int  # 1-based; 0 when the problem is not tied to a line
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = _REPR.maxother = 60


def _shown(value: Any) -> str:
    """repr() bounded in length: a value may be huge, or multiplied by YAML aliases."""
    return _REPR.repr(value)


def _no_nul(value: str) -> str:
    # Paths and command lines end at a NUL byte: the rest would silently be lost.
    if "\0" in value:
        raise ValueError(f"{_shown(value)} contains a NUL byte")
    return value


def _kernel(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ValueError("must be 'running', 'latest' or a kernel version such as 6.1.0-28-amd64")
    if "/" in value:
        raise ValueError(
            f"{_shown(value)} is a path; a version is expected (use kernel_image for paths)"
        )
    return _no_nul(value)


def _optional_path(value: Any) -> Path | None:
    if value is None or value == "":
        return None
    return _absolute_path(value)


def _absolute_path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("must be an absolute path")
    path = Path(_no_nul(value))
    if not path.is_absolute():
        raise ValueError(f"{_shown(value)} is a relative path; an absolute path is required")
    return path


def _existing_file(value: Any) -> Path | None:
    path = _optional_path(value)
    if path is not None and not path.is_file():
        raise ValueError(f"{path} does not exist or is not a regular file")
    return path


def _words(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of strings")
    for word in value:
        if any(c.isspace() for c in word):
            raise ValueError(
                f"{_shown(word)} contains white space; give one parameter per list item"
            )
        _no_nul(word)
    return tuple(value)


def _size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a size such as 64M")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative")
        return value
    if not isinstance(value, str):
        raise ValueError("must be a size such as 64M")
    try:
        return parse_size(value)
    except SizeError as e:
        raise ValueError(str(e)) from None


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{_shown(value)} is not a whole number >= 0")
    return value


def _dump_level(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 31:
        raise ValueError(f"{_shown(value)} is not a makedumpfile dump level (0 to 31)")
    return value


def _target(value: Any) -> target.Target | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("must be a URL: ssh://USER@HOST[:PORT]/PATH or nfs://HOST/EXPORT")
    return target.parse(value)


def _choice(choices: tuple[str, ...]) -> Any:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{_shown(value)} is not one of: {', '.join(choices)}")
        return str(value)

    return check


_FIELDS: dict[str, Any] = {
    "kernel": _kernel,
    "kernel_image": _existing_file,
    "initrd": _existing_file,
    "cmdline_remove": _words,
    "cmdline_append": _words,
    "dump_path": _absolute_path,
    "dump_level": _dump_level,
    "compression": _choice(COMPRESSIONS),
    "makedumpfile_args": _words,
    "min_free_space": _size,
    "keep_dumps": _count,
    "final_action": _choice(FINAL_ACTIONS),
    "failure_action": _choice(FAILURE_ACTIONS),
    "min_reservation": _size,
    "target": _target,
    "ssh_key": _absolute_path,
}


def _compose(text: str) -> Any:
    """yaml.compose, refusing nesting deeper than MAX_DEPTH before PyYAML's recursive
    composer (and the constructor after it) could run out of stack."""
    import yaml  # here: the capture initramfs uses Config and has no PyYAML

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.depth == MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    problem=f"nested more than {MAX_DEPTH} levels deep",
                    problem_mark=parent.start_mark,  # the collection that is too deep
                )
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return yaml.compose(text, Loader=Loader)


def parse(text: str, path: Path) -> Config:
    """Build a Config from YAML text; raise ConfigError listing every problem found."""
    import yaml

    try:
        root = _compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([Problem(path, line, "", f"not valid YAML: {problem}")]) from None
    if root is None:  # an empty file means "all defaults"
        return Config(path=path)
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            [Problem(path, root.start_mark.line + 1, "", "must be a mapping of key: value")]
        )
    constructor = yaml.constructor.SafeConstructor()
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    lines: dict[str, int] = {}
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
        if key in lines:
            problems.append(Problem(path, line, key, "given twice"))
            continue
        lines[key] = line
        check = _FIELDS.get(key)
        if check is None:
            problems.append(
                Problem(path, line, key, f"unknown key (known: {', '.join(sorted(_FIELDS))})")
            )
            continue
        try:
            raw = constructor.construct_object(value_node, deep=True)
            values[key] = check(raw)
        except (ValueError, yaml.YAMLError) as e:
            problems.append(Problem(path, value_node.start_mark.line + 1, key, str(e)))
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(Config(path=path), lines=lines, **values)


def ssh_key_problem(cfg: Config) -> Problem | None:
    """What is wrong with the key an ssh target logs in with, at its line. Not a parse
    error: the key is a file of its own, made after the config (kdumpd target-setup), and
    without it only the sending fails, not the rest of capture."""
    if not isinstance(cfg.target, target.SshTarget):
        return None
    key = cfg.ssh_key
    line = cfg.lines.get("ssh_key", cfg.lines.get("target", 0))
    try:
        mode = key.stat().st_mode
    except OSError as e:
        return Problem(
            cfg.path, line, "ssh_key",
            f"{key}: {e.strerror}; create it with kdumpd target-setup "
            f"(or ssh-keygen -t ed25519 -N '' -f {key})",
        )  # fmt: skip
    if not stat.S_ISREG(mode):
        return Problem(cfg.path, line, "ssh_key", f"{key} is not a regular file")
    if mode & 0o077:
        return Problem(
            cfg.path, line, "ssh_key",
            f"{key} can be read by others than its owner; chmod 600 {key} (ssh refuses it)",
        )  # fmt: skip
    return None


def load(path: Path = DEFAULT_PATH) -> Config:
    """Read the config file; a missing default file means all defaults."""
    try:
        text = safefile.read(path, MAX_BYTES).decode("utf-8")
    except FileNotFoundError:
        if path == DEFAULT_PATH:
            return Config(path=path)
        raise ConfigError([Problem(path, 0, "", "no such file")]) from None
    except safefile.Refused as e:
        raise ConfigError([Problem(path, 0, "", str(e))]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem(path, 0, "", f"cannot be read: {e}")]) from None
    return parse(text, path)
