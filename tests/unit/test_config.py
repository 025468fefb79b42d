"""Config parsing: defaults, every key, and bad input reported with file, line and key."""

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
