"""`kdumpd crashkernel --set` and the next boot's crashkernel=, on fake machines of each
boot loader kind; the commands go to a recorder (or a fake grubby) instead of running."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpd import UserError, bootloader, cli

ENTRY = "title Fedora Linux ({v})\nversion {v}\nlinux /vmlinuz-{v}\noptions {options}\n"
FEDORA_OPTIONS = "root=UUID=6b1f rhgb quiet crashkernel=2G-64G:256M,64G-:512M"


def put(root: Path, path: str, text: str = "") -> Path:
    file = root / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
    return file


def debian(root: Path, cmdline: str = "crashkernel=192M") -> Path:
    """A Debian 12 machine booting with GRUB."""
    put(root, "usr/sbin/update-grub")
    put(root, "boot/grub/grub.cfg")
    put(
        root,
        "etc/default/grub",
        "GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\n"
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n',
    )
    put(root, "proc/cmdline", f"BOOT_IMAGE=/boot/vmlinuz-6.1.0-26-amd64 root=/dev/vda1 {cmdline}\n")
    return root


def systemd_boot(root: Path, cmdline: str = "root=UUID=6b1f rw quiet\n") -> Path:
    put(root, KERNEL_CMDLINE, cmdline)
    for v in ("6.1.0-26-amd64", "6.12.38+deb12-amd64"):
        put(root, f"boot/vmlinuz-{v}", "kernel")
    return root


KERNEL_CMDLINE = "etc/kernel/cmdline"


def fedora(root: Path) -> Path:
    put(root, "usr/sbin/grubby")
    for v in ("6.14.2-300.fc42.x86_64", "6.15.4-200.fc42.x86_64"):
        put(root, f"boot/loader/entries/abc-{v}.conf", ENTRY.format(v=v, options=FEDORA_OPTIONS))
    return root


class Recorder:
    def __init__(self) -> None:
        self.commands: list[tuple[str, ...]] = []

    def __call__(self, command: tuple[str, ...]) -> None:
        self.commands.append(command)


class FakeGrubby(Recorder):
    """grubby --update-kernel=ALL --args=crashkernel=X: every entry's crashkernel= becomes X."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __call__(self, command: tuple[str, ...]) -> None:
        super().__call__(command)
        arg = command[2].removeprefix("--args=")
        for entry in (self.root / "boot/loader/entries").glob("*.conf"):
            lines = entry.read_text().splitlines()
            for i, line in enumerate(lines):
                if line.startswith("options "):
                    words = [w for w in line.split()[1:] if not w.startswith("crashkernel=")]
                    lines[i] = " ".join(["options", *words, arg])
            entry.write_text("\n".join(lines) + "\n")


def test_debian_with_grub_gets_a_dropin_and_update_grub(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = debian(tmp_path)
    assert bootloader.detect(root) == "grub"
    assert bootloader.configured(root).values == {}
    run = Recorder()
    assert cli.set_crashkernel("256M", force=False, sysroot=root, runner=run) == 0
    dropin = (root / "etc/default/grub.d/kdumpd.cfg").read_text()
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT crashkernel=256M"' in dropin
    assert run.commands == [("update-grub",)]
    out = capsys.readouterr().out
    assert "/etc/default/grub.d/kdumpd.cfg:\n" in out
    assert '+ GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT crashkernel=256M"' in out
    assert "reboot to apply it" in out
    assert bootloader.configured(root).values == {"plain": "256M"}


def test_setting_it_again_replaces_kdumpds_own_and_the_same_value_does_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = debian(tmp_path)
    run = Recorder()
    cli.set_crashkernel("256M", force=False, sysroot=root, runner=run)
    cli.set_crashkernel("crashkernel=2G-64G:320M,64G-:512M", force=False, sysroot=root, runner=run)
    out = capsys.readouterr().out
    assert '- GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT crashkernel=256M"' in out
    assert bootloader.configured(root).values == {"plain": "2G-64G:320M,64G-:512M"}
    cli.set_crashkernel("2G-64G:320M,64G-:512M", force=False, sysroot=root, runner=run)
    assert "already; nothing to do" in capsys.readouterr().out
    assert run.commands == [("update-grub",)] * 2


def test_kdump_tools_value_is_not_overridden_without_force(tmp_path: Path) -> None:
    root = debian(tmp_path)
    # Debian's kdump-tools ships this file as it is.
    put(
        root,
        "etc/default/grub.d/kdump-tools.cfg",
        'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT crashkernel=384M-:128M"\n',
    )
    assert bootloader.configured(root).values == {"plain": "384M-:128M"}
    run = Recorder()
    with pytest.raises(UserError) as refused:
        cli.set_crashkernel("256M", force=False, sysroot=root, runner=run)
    assert "crashkernel=384M-:128M in /etc/default/grub.d/kdump-tools.cfg line 1" in str(
        refused.value
    )
    assert "--force" in str(refused.value)
    assert not (root / "etc/default/grub.d/kdumpd.cfg").exists() and run.commands == []
    # kdumpd.cfg is read after kdump-tools.cfg, so with --force the next boot gets 256M.
    assert cli.set_crashkernel("256M", force=True, sysroot=root, runner=run) == 0
    assert bootloader.configured(root).values == {"plain": "256M"}


def test_a_later_file_that_overrides_kdumpds_is_an_error(tmp_path: Path) -> None:
    root = debian(tmp_path)
    put(root, "etc/default/grub.d/zz-local.cfg", "GRUB_CMDLINE_LINUX_DEFAULT='quiet'\n")
    with pytest.raises(UserError, match="the next boot gets no crashkernel="):
        cli.set_crashkernel("256M", force=False, sysroot=root, runner=Recorder())


def test_grub_files_are_read_as_the_shell_reads_them(tmp_path: Path) -> None:
    root = debian(tmp_path)
    put(
        root,
        "etc/default/grub",
        '# GRUB_CMDLINE_LINUX="crashkernel=1G"\n'
        "GRUB_CMDLINE_LINUX='console=ttyS0 crashkernel=512M'\n"
        'export GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
        'GRUB_CMDLINE_LINUX_DEFAULT="${GRUB_CMDLINE_LINUX_DEFAULT} splash crashkernel=128M"\n',
    )
    now = bootloader.configured(root)
    # ${GRUB_CMDLINE_LINUX} comes first on the linux line: the last one, 128M, wins.
    assert now.values == {"plain": "128M"}
    assert [str(s) for s in now.settings] == [
        "crashkernel=512M in /etc/default/grub line 2",
        "crashkernel=128M in /etc/default/grub line 4",
    ]


def test_kernel_install_edits_etc_kernel_cmdline_and_reinstalls_each_kernel(
    tmp_path: Path,
) -> None:
    root = systemd_boot(tmp_path)
    assert bootloader.detect(root) == "kernel-install"
    run = Recorder()
    cli.set_crashkernel("256M", force=False, sysroot=root, runner=run)
    assert (root / KERNEL_CMDLINE).read_text() == "root=UUID=6b1f rw quiet crashkernel=256M\n"
    assert run.commands == [
        ("kernel-install", "add", "6.1.0-26-amd64", "/boot/vmlinuz-6.1.0-26-amd64"),
        ("kernel-install", "add", "6.12.38+deb12-amd64", "/boot/vmlinuz-6.12.38+deb12-amd64"),
    ]


def test_kernel_install_refuses_to_replace_the_admins_value_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = systemd_boot(tmp_path, "root=UUID=6b1f rw crashkernel=1G quiet\n")
    with pytest.raises(UserError, match=r"crashkernel=1G in /etc/kernel/cmdline line 1"):
        cli.set_crashkernel("256M", force=False, sysroot=root, runner=Recorder())
    assert "crashkernel=1G" in (root / KERNEL_CMDLINE).read_text()
    cli.set_crashkernel("256M", force=True, sysroot=root, runner=Recorder())
    out = capsys.readouterr().out
    assert (
        "- root=UUID=6b1f rw crashkernel=1G quiet\n+ root=UUID=6b1f rw quiet crashkernel=256M"
        in out
    )
    assert (root / KERNEL_CMDLINE).read_text() == "root=UUID=6b1f rw quiet crashkernel=256M\n"


def test_grubby_updates_every_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fedora(tmp_path)
    assert bootloader.detect(root) == "grubby"
    assert bootloader.configured(root).values == {"plain": "2G-64G:256M,64G-:512M"}
    grubby = FakeGrubby(root)
    with pytest.raises(UserError, match=r"abc-6\.15\.4-200\.fc42\.x86_64\.conf line 4"):
        cli.set_crashkernel("384M", force=False, sysroot=root, runner=grubby)
    assert grubby.commands == []
    cli.set_crashkernel("384M", force=True, sysroot=root, runner=grubby)
    assert grubby.commands == [("grubby", "--update-kernel=ALL", "--args=crashkernel=384M")]
    out = capsys.readouterr().out
    assert (
        f"- options {FEDORA_OPTIONS}\n+ options root=UUID=6b1f rhgb quiet crashkernel=384M" in out
    )
    assert bootloader.configured(root).values == {"plain": "384M"}


def test_the_newest_entry_is_the_next_boot(tmp_path: Path) -> None:
    root = fedora(tmp_path)
    put(
        root,
        "boot/loader/entries/abc-6.16.0-100.fc42.x86_64.conf",
        ENTRY.format(v="6.16.0-100.fc42.x86_64", options="root=UUID=6b1f crashkernel=1G"),
    )
    assert bootloader.configured(root).values == {"plain": "1G"}


def test_no_boot_loader_says_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no grubby, no update-grub with /boot/grub/grub\.cfg"):
        cli.set_crashkernel("256M", force=False, sysroot=tmp_path, runner=Recorder())


@pytest.mark.parametrize("value", ["256MB", "auto", '256M"; reboot; "', "256M 1G", ""])
def test_a_bad_value_is_refused_before_anything_is_written(tmp_path: Path, value: str) -> None:
    root = debian(tmp_path)
    with pytest.raises(UserError, match="invalid crashkernel="):
        cli.set_crashkernel(value, force=False, sysroot=root, runner=Recorder())
    assert not (root / "etc/default/grub.d").exists()


def test_a_high_value_is_overridden_by_a_plain_one(tmp_path: Path) -> None:
    assert bootloader.gets({"high": "512M,high"}, "512M,high")
    assert not bootloader.gets({"high": "512M,high", "plain": "128M"}, "512M,high")
    assert bootloader.gets({"high": "512M,high", "plain": "128M"}, "128M")


def test_status_says_when_the_next_boot_differs(tmp_path: Path) -> None:
    root = debian(tmp_path, cmdline="crashkernel=192M")
    assert cli.next_boot(root) == (
        "no crashkernel= (grub); crashkernel=192M in effect now: a reboot applies it"
    )
    cli.set_crashkernel("256M", force=False, sysroot=root, runner=Recorder())
    assert cli.next_boot(root) == (
        "crashkernel=256M (/etc/default/grub.d/kdumpd.cfg); crashkernel=192M in effect now: "
        "a reboot applies it"
    )
    put(root, "proc/cmdline", "BOOT_IMAGE=/boot/vmlinuz-6.1.0-26-amd64 crashkernel=256M\n")
    assert cli.next_boot(root) == ""
    assert cli.next_boot(tmp_path / "elsewhere") == ""  # no boot loader found: nothing to say
