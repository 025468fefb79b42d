"""Config parsing: defaults, every key, and bad input reported with file, line and key."""

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kdumpd import config


def problems(text: str, path: Path = Path("/etc/kdumpd/kdumpd.yaml")) -> list[str]:
    with pytest.raises(config.ConfigError) as info:
        config.parse(text, path)
    return [str(p) for p in info.value.problems]


def test_empty_file_gives_defaults() -> None:
    cfg = config.parse("", Path("/x.yaml"))
    assert cfg == config.Config(path=Path("/x.yaml"))
    assert cfg.kernel == "running"
    assert cfg.dump_path == Path("/var/crash")
    assert cfg.dump_level == 31
    assert cfg.min_free_space == 64 << 20


def test_shipped_example_is_valid_and_matches_defaults() -> None:
    shipped = Path(__file__).parents[2] / "conf" / "kdumpd.yaml"
    assert config.parse(shipped.read_text(), shipped) == config.Config(path=shipped)


def test_every_key(tmp_path: Path) -> None:
    image = tmp_path / "vmlinuz"
    image.write_bytes(b"k")
    text = f"""
kernel: latest
kernel_image: {image}
cmdline_remove: [quiet, console=tty0]
cmdline_append: ["nr_cpus=2"]
dump_path: /srv/crash
dump_level: 1
compression: zstd
makedumpfile_args: ["--num-threads=2"]
min_free_space: 1G
keep_dumps: 0
final_action: poweroff
failure_action: shell
min_reservation: 0x10000000
"""
    cfg = config.parse(text, tmp_path / "c.yaml")
    assert cfg.kernel == "latest"
    assert cfg.kernel_image == image
    assert cfg.initrd is None
    assert cfg.cmdline_remove == ("quiet", "console=tty0")
    assert cfg.cmdline_append == ("nr_cpus=2",)
    assert cfg.dump_path == Path("/srv/crash")
    assert cfg.dump_level == 1
    assert cfg.compression == "zstd"
    assert cfg.makedumpfile_args == ("--num-threads=2",)
    assert cfg.min_free_space == 1 << 30
    assert cfg.keep_dumps == 0
    assert (cfg.final_action, cfg.failure_action) == ("poweroff", "shell")
    assert cfg.min_reservation == 256 << 20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("min_free_space: 12Q\n", "kdumpd.yaml:1: min_free_space: invalid size '12Q'"),
        ("min_reservation: -5M\n", "kdumpd.yaml:1: min_reservation: invalid size '-5M'"),
        ("keep_dumps: 3\ndump_level: 32\n", "kdumpd.yaml:2: dump_level: 32 is not"),
        ("dump_path: crash\n", "kdumpd.yaml:1: dump_path: 'crash' is a relative path"),
        ("kernel_image: /nonexistent/vmlinuz\n", "kernel_image: /nonexistent/vmlinuz does not"),
        ("initrd: boot/initrd.img\n", "initrd: 'boot/initrd.img' is a relative path"),
        ("dump_levle: 31\n", "kdumpd.yaml:1: dump_levle: unknown key"),
        ("compression: gzip\n", "compression: 'gzip' is not one of: lzo, zstd, zlib, none"),
        ("final_action: shell\n", "final_action: 'shell' is not one of: reboot, poweroff, halt"),
        ("cmdline_append: nr_cpus=2\n", "cmdline_append: must be a list of strings"),
        ("cmdline_append: ['a b']\n", "contains white space"),
        ("keep_dumps: yes\n", "keep_dumps: True is not a whole number"),
        ("kernel: /boot/vmlinuz\n", "kernel: '/boot/vmlinuz' is a path"),
        ("kernel: 5\n", "kernel: must be 'running', 'latest' or a kernel version"),
        ("keep_dumps: 1\nkeep_dumps: 2\n", "kdumpd.yaml:2: keep_dumps: given twice"),
        ("- a\n- b\n", "kdumpd.yaml:1: must be a mapping"),
        ("just text\n", "must be a mapping"),
        ("kernel: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_values_name_file_line_and_key(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found
    assert all(p.startswith("/etc/kdumpd/kdumpd.yaml") for p in found)


def test_all_problems_are_reported_at_once() -> None:
    found = problems("dump_level: 99\nbogus: 1\nmin_free_space: 12Q\n")
    assert len(found) == 3
    assert [p.split(":")[1] for p in found] == ["1", "2", "3"]


def test_yaml_error_has_a_line_number() -> None:
    (found,) = problems("kernel: running\ndump_path: [x\nkeep_dumps: 3\n")
    assert found.startswith("/etc/kdumpd/kdumpd.yaml:")
    assert "not valid YAML" in found
    assert int(found.split(":")[1]) >= 2


def test_missing_default_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "kdumpd.yaml"
    monkeypatch.setattr(config, "DEFAULT_PATH", missing)
    assert config.load(missing) == config.Config(path=missing)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(tmp_path / "other.yaml")


def test_binary_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(config.ConfigError, match=str(path)):
        config.load(path)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # the socket file stays when the socket is closed


def _zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _directory(path: Path) -> None:
    path.mkdir()


def _too_big(path: Path) -> None:
    path.write_bytes(b"#" * (config.MAX_BYTES + 1))


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_fifo, "is a FIFO, not a regular file"),
        (_socket, "is a socket, not a regular file"),
        (_zero, "is a character device, not a regular file"),
        (_directory, "is a directory, not a regular file"),
        (_too_big, "is larger than 1 MiB"),
    ],
)
def test_a_config_that_is_not_a_small_regular_file_is_refused_unread(
    tmp_path: Path, make: Callable[[Path], None], expected: str
) -> None:
    path = tmp_path / "kdumpd.yaml"
    make(path)
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    assert [str(p) for p in info.value.problems] == [f"{path}: {expected}"]


def test_a_config_of_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "kdumpd.yaml"
    text = "keep_dumps: 2\n"
    path.write_text(text + "#" * (config.MAX_BYTES - len(text) - 1) + "\n")
    assert path.stat().st_size == config.MAX_BYTES
    assert config.load(path).keep_dumps == 2


def _nested(depth: int) -> str:
    """A block mapping nested `depth` levels below the root mapping, one key per line."""
    return "keep_dumps:\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(1, depth + 1))


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("kernel: " + "[" * 300 + "]" * 300 + "\n", 1),
        ("kernel: " + "{a: " * 300 + "}" * 300 + "\n", 1),
        (_nested(600), config.MAX_DEPTH),
    ],
)
def test_deep_nesting_is_an_error_with_its_line(text: str, line: int) -> None:
    assert problems(text) == [
        f"/etc/kdumpd/kdumpd.yaml:{line}: not valid YAML: nested more than 20 levels deep"
    ]


def test_nesting_up_to_the_limit_reaches_the_checks() -> None:
    # The root mapping is one level, keep_dumps' value the next; k1..k18 fill the rest.
    (found,) = problems(_nested(config.MAX_DEPTH - 2))
    assert "keep_dumps: {'k1': {'k2': {...}}} is not a whole number" in found


def test_kdumpd_check_prints_a_deep_config_as_one_error(tmp_path: Path) -> None:
    path = tmp_path / "kdumpd.yaml"
    path.write_text("kernel: " + "[" * 5000 + "]" * 5000 + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "kdumpd.cli", "check", "--config", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert f"error: {path}:1: not valid YAML: nested more than 20 levels deep\n" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'cmdline_append: ["nr_cpus=2", "a\\0b"]\n',
            "cmdline_append: 'a\\x00b' contains a NUL byte",
        ),
        ('cmdline_remove: ["quiet\\0"]\n', "cmdline_remove: 'quiet\\x00' contains a NUL byte"),
        ('makedumpfile_args: ["-d\\0"]\n', "makedumpfile_args: '-d\\x00' contains a NUL byte"),
        ('dump_path: "/var/crash\\0x"\n', "dump_path: '/var/crash\\x00x' contains a NUL byte"),
        ('kernel: "6.1\\0"\n', "kernel: '6.1\\x00' contains a NUL byte"),
    ],
)
def test_nul_bytes_are_an_error_naming_the_key(text: str, expected: str) -> None:
    (found,) = problems(text)
    assert found == f"/etc/kdumpd/kdumpd.yaml:1: {expected}"


def test_a_value_multiplied_by_aliases_is_shown_short() -> None:
    # 10**6 list items from a few lines: the message must not spell them all out.
    text = "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"
    for name, prev in zip("bcde", "abcd", strict=True):
        text += f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]\n"
    (found,) = [p for p in problems(text + "compression: *e\n") if ": compression: " in p]
    assert found.endswith("is not one of: lzo, zstd, zlib, none")
    assert len(found) < 1000, found  # unbounded, it would be megabytes


def test_a_target_is_parsed_and_its_ssh_key_checked(tmp_path: Path) -> None:
    """SPEC "Dump targets": target URL, ssh_key (default /etc/kdumpd/id_ed25519)."""
    from kdumpd.target import NfsTarget, SshTarget

    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    c = Path("/c.yaml")
    cfg = config.parse(f"target: ssh://kdump@192.0.2.1:2222/var/crash\nssh_key: {key}\n", c)
    assert cfg.target == SshTarget("kdump", "192.0.2.1", 2222, "/var/crash")
    assert cfg.ssh_key == key and config.ssh_key_problem(cfg) is None
    nfs = config.parse(f"target: nfs://192.0.2.1/export\nssh_key: {tmp_path}/none\n", c)
    assert nfs.target == NfsTarget("192.0.2.1", "/export")
    assert config.ssh_key_problem(nfs) is None  # no key needed
    assert config.Config().target is None
    assert config.Config().ssh_key == Path("/etc/kdumpd/id_ed25519")

    key.chmod(0o644)
    cfg = config.parse(f"\ntarget: ssh://k@h/d\nssh_key: {key}\n", c)
    assert str(config.ssh_key_problem(cfg)) == (
        f"/c.yaml:3: ssh_key: {key} can be read by others than its owner; chmod 600 {key} "
        "(ssh refuses it)"
    )
    cfg = config.parse(f"target: ssh://k@h/d\nssh_key: {tmp_path}\n", c)
    assert (
        str(config.ssh_key_problem(cfg)) == f"/c.yaml:2: ssh_key: {tmp_path} is not a regular file"
    )
    # The default key, at the target's line when ssh_key is not given.
    cfg = dataclasses.replace(config.parse("\ntarget: ssh://k@h/d\n", c), ssh_key=tmp_path / "none")
    assert str(config.ssh_key_problem(cfg)) == (
        f"/c.yaml:2: ssh_key: {tmp_path}/none: No such file or directory; create it with "
        f"kdumpd target-setup (or ssh-keygen -t ed25519 -N '' -f {tmp_path}/none)"
    )
    assert problems("a: 1\ntarget: ftp://h/x\n", c)[1].startswith(
        "/c.yaml:2: target: 'ftp://h/x' is not a target URL"
    )
    assert problems("target: [1]\n", c) == [
        "/c.yaml:1: target: must be a URL: ssh://USER@HOST[:PORT]/PATH or nfs://HOST/EXPORT"
    ]


def test_kdumpd_check_names_a_bad_ssh_key_and_says_where_dumps_go(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kdumpd.yaml"
    key = tmp_path / "id_ed25519"
    path.write_text(f"target: ssh://kdump@192.0.2.1/var/crash\nssh_key: {key}\n")
    check = [sys.executable, "-m", "kdumpd.cli", "check", "--config", str(path)]
    result = subprocess.run(check, capture_output=True, text=True)
    assert result.returncode == 1
    assert f"error: {path}:2: ssh_key: {key}: No such file or directory" in result.stderr
    path.write_text("target: nfs://192.0.2.1/export\n")
    result = subprocess.run(check, capture_output=True, text=True)
    assert (
        "warning: target nfs://192.0.2.1/export: a crash dump is saved to /var/crash instead: "
        "the way to 192.0.2.1 is known once kdumpd-target-check.service checked it"
    ) in result.stderr
    path.write_text("")
    result = subprocess.run([*check, "--target"], capture_output=True, text=True)
    assert f"error: {path}: --target: no target is configured" in result.stderr
