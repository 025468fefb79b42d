"""Building the capture kernel's command line."""

import pytest

from kdumpd import cmdline

DEBIAN = "BOOT_IMAGE=/boot/vmlinuz-6.1.0-28-amd64 root=UUID=1234 ro quiet crashkernel=256M"


def test_removes_what_must_not_reach_the_crash_kernel() -> None:
    line = cmdline.build(
        DEBIAN + " hugepages=64 hugepagesz=2M default_hugepagesz=2M nr_cpus=4 "
        "systemd.unit=graphical.target log_buf_len=1M rd.systemd.unit=emergency.target "
        "elfcorehdr=0x7f000000"
    )
    params = cmdline.split(line)
    assert "root=UUID=1234" in params and "ro" in params
    for gone in (
        "quiet",
        "crashkernel",
        "hugepages",
        "hugepagesz",
        "default_hugepagesz",
        "BOOT_IMAGE",
        "log_buf_len",
        "rd.systemd.unit",  # would boot the initramfs into another target than capture
        "elfcorehdr",  # the kernel appends the right one; a second would win or confuse
    ):
        assert gone not in [cmdline.name(p) for p in params], gone
    assert params.count("nr_cpus=1") == 1 and "nr_cpus=4" not in params
    assert "systemd.unit=kdumpd-capture.target" in params
    assert "systemd.unit=graphical.target" not in params


def test_the_capture_initramfs_gets_its_own_init_and_no_systemd_parameters() -> None:
    line = cmdline.build(DEBIAN + " rdinit=/sbin/other init=/bin/bash", system=False)
    names = [cmdline.name(p) for p in cmdline.split(line)]
    assert "rdinit" not in names and "init" not in names
    assert not [n for n in names if n.startswith(("systemd.", "udev."))], line
    assert "nr_cpus" in names and "reset_devices" in names


# Spelled out, not read from cmdline.APPEND: dropping one there must fail a test.
CAPTURE_NEEDS = (
    "irqpoll",
    "nr_cpus=1",
    "reset_devices",
    "panic=10",
    "cgroup_disable=memory",
    "transparent_hugepage=never",
    "novmcoredd",
    "cma=0",
    "hugetlb_cma=0",
    "usbcore.nousb",
)
X86_ONLY = ("mce=off", "numa=off", "acpi_no_memhotplug", "hest_disable", "nokaslr")


@pytest.mark.parametrize("system", [True, False])
def test_adds_what_capture_needs(system: bool) -> None:
    params = cmdline.split(cmdline.build(DEBIAN, system=system))
    for needed in (*CAPTURE_NEEDS, *X86_ONLY):
        assert params.count(needed) == 1, needed


@pytest.mark.parametrize("machine", ["aarch64", "ppc64le", "s390x", "riscv64", "loongarch64"])
def test_x86_only_parameters_stay_off_other_machines(machine: str) -> None:
    params = cmdline.split(cmdline.build(DEBIAN, machine=machine))
    assert not set(X86_ONLY) & set(params), params
    assert set(CAPTURE_NEEDS) <= set(params)


def test_user_remove_and_append() -> None:
    line = cmdline.build(
        DEBIAN + " console=tty0 console=ttyS0,115200",
        remove=("console=tty0",),
        append=("nr_cpus=2", "kdump.test=1"),
    )
    params = cmdline.split(line)
    assert "console=tty0" not in params and "console=ttyS0,115200" in params
    assert "nr_cpus=2" in params and "nr_cpus=1" not in params
    assert params[-1] == "kdump.test=1"


def test_quotes_and_init_arguments() -> None:
    line = cmdline.build('root=/dev/vda dyndbg="file foo.c +p" crashkernel=128M -- single')
    assert 'dyndbg="file foo.c +p"' in cmdline.split(line)
    assert "single" not in line and "--" not in cmdline.split(line)


def test_too_long_is_refused_with_numbers() -> None:
    long = DEBIAN + " " + " ".join(f"opt{i}=value{i}" for i in range(200))
    with pytest.raises(cmdline.CmdlineTooLong, match=r"the kernel accepts 2047"):
        cmdline.build(long)
    # 32 bytes stay free for the " elfcorehdr=0x<address>" the kernel appends.
    short_limit = len(cmdline.build(DEBIAN)) + 32
    assert cmdline.build(DEBIAN, max_len=short_limit)
    with pytest.raises(cmdline.CmdlineTooLong, match="needs 32 of them for elfcorehdr="):
        cmdline.build(DEBIAN, max_len=short_limit - 1)


def test_unit_masks_add_up_and_can_be_removed() -> None:
    default_masks = [p for p in cmdline.APPEND_SYSTEM if p.startswith("systemd.mask=")]
    assert "systemd.mask=systemd-journal-flush.service" in default_masks
    line = cmdline.build(
        DEBIAN + " systemd.mask=broken.service",
        remove=("systemd.mask=systemd-binfmt.service",),
        append=("systemd.mask=slow.service",),
    )
    masks = [p for p in cmdline.split(line) if p.startswith("systemd.mask=")]
    assert "systemd.mask=broken.service" in masks  # the running system's mask is kept
    assert "systemd.mask=slow.service" in masks  # the user's adds to the defaults
    assert "systemd.mask=systemd-binfmt.service" not in masks  # removed by the user
    assert set(default_masks) - set(masks) == {"systemd.mask=systemd-binfmt.service"}


def test_user_remove_drops_a_default() -> None:
    params = cmdline.split(cmdline.build(DEBIAN, remove=("irqpoll", "numa")))
    assert "irqpoll" not in params and "numa=off" not in params
    assert "reset_devices" in params


def test_the_limit_counts_bytes_not_characters() -> None:
    line = cmdline.build(DEBIAN, append=("label=é",))
    size = len(line.encode())
    assert size == len(line) + 1
    fits = size + 32
    assert cmdline.build(DEBIAN, append=("label=é",), max_len=fits) == line
    with pytest.raises(cmdline.CmdlineTooLong, match=rf"is {size} bytes; the kernel accepts"):
        cmdline.build(DEBIAN, append=("label=é",), max_len=fits - 1)


def test_a_big_machines_crash_kernel_gets_its_cpus() -> None:
    params = cmdline.split(cmdline.build("root=/dev/vda nr_cpus=64", system=False, cpus=4))
    assert "nr_cpus=4" in params and "nr_cpus=1" not in params and "nr_cpus=64" not in params
    # the admin's nr_cpus= in cmdline_append wins
    params = cmdline.split(
        cmdline.build("root=/dev/vda", append=("nr_cpus=2",), system=False, cpus=4)
    )
    assert [p for p in params if p.startswith("nr_cpus")] == ["nr_cpus=2"]
