"""kdumpd.reservation: crashkernel= parsing, /proc/iomem, the capture estimate, verdicts.

Expected sizes follow kernel/crash_reserve.c: RAM is rounded up to 128M before
ranges are matched, the first range with start <= RAM < end wins, any range read
before the match whose size is not below RAM invalidates the whole value, and a
crash size not below RAM reserves nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpd.reservation import (
    MAX_CAPTURE_CPUS,
    PER_CPU_BYTES,
    CaptureEstimate,
    CrashKernelParam,
    CrashKernelSyntaxError,
    IomemRange,
    Reservation,
    Verdict,
    assess,
    boot_cpu_apicid,
    capture_cpus,
    capture_estimate,
    count_cpus,
    crash_ranges,
    crashkernel_params,
    default_low_bytes,
    nice_size,
    parse_crashkernel_value,
    parse_iomem,
    planned_cpus,
    read_reservation,
    recommended_bytes,
    requested_bytes,
    sizing,
    system_ram_bytes,
)

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40

FEDORA = "2G-64G:256M,64G-:512M"  # Fedora 40+/RHEL 10 kdump-utils default (x86_64)
FEDORA_OLD = "1G-4G:192M,4G-64G:256M,64G-:512M"  # Fedora/RHEL 9 before 2025
UBUNTU = "2G-4G:320M,4G-32G:512M,32G-64G:1024M,64G-128G:2048M,128G-:4096M"  # 24.04+
UBUNTU_ZERO = "0M-2G:0M,2G-4G:320M,4G-8G:384M,8G-:512M"
UBUNTU_OLD = "384M-2G:64M,2G-:128M"
UBUNTU_FOCAL = "512M-:192M"
DEBIAN = "384M-:128M"  # Debian kdump-tools

RAMS = (512 * M, 1 * G, 2 * G, 4 * G, 64 * G, 128 * G)


# --- parse_crashkernel_value ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("256M", CrashKernelParam("256M", 256 * M, (), None, "plain")),
        ("128M@16M", CrashKernelParam("128M@16M", 128 * M, (), 16 * M, "plain")),
        ("0x10000000", CrashKernelParam("0x10000000", 256 * M, (), None, "plain")),
        ("512M,high", CrashKernelParam("512M,high", 512 * M, (), None, "high")),
        ("242M,high", CrashKernelParam("242M,high", 242 * M, (), None, "high")),
        ("72M,low", CrashKernelParam("72M,low", 72 * M, (), None, "low")),
        ("0,low", CrashKernelParam("0,low", 0, (), None, "low")),
        ("64M,cma", CrashKernelParam("64M,cma", 64 * M, (), None, "cma")),
        (
            FEDORA,
            CrashKernelParam(
                FEDORA, None, ((2 * G, 64 * G, 256 * M), (64 * G, None, 512 * M)), None, "plain"
            ),
        ),
        (
            FEDORA_OLD,
            CrashKernelParam(
                FEDORA_OLD,
                None,
                ((1 * G, 4 * G, 192 * M), (4 * G, 64 * G, 256 * M), (64 * G, None, 512 * M)),
                None,
                "plain",
            ),
        ),
        (
            UBUNTU_ZERO,
            CrashKernelParam(
                UBUNTU_ZERO,
                None,
                (
                    (0, 2 * G, 0),
                    (2 * G, 4 * G, 320 * M),
                    (4 * G, 8 * G, 384 * M),
                    (8 * G, None, 512 * M),
                ),
                None,
                "plain",
            ),
        ),
        (DEBIAN, CrashKernelParam(DEBIAN, None, ((384 * M, None, 128 * M),), None, "plain")),
        (
            "2G-64G:256M,64G-:512M@16M",
            CrashKernelParam(
                "2G-64G:256M,64G-:512M@16M",
                None,
                ((2 * G, 64 * G, 256 * M), (64 * G, None, 512 * M)),
                16 * M,
                "plain",
            ),
        ),
        (
            "0x80000000-:0x10000000",
            CrashKernelParam(
                "0x80000000-:0x10000000", None, ((2 * G, None, 256 * M),), None, "plain"
            ),
        ),
    ],
)
def test_parse_crashkernel_value(value: str, expected: CrashKernelParam) -> None:
    assert parse_crashkernel_value(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "no value (write e.g. crashkernel=256M)"),
        ("12Q", "unknown suffix 'Q' (use K, M, G, T, P or E)"),
        ("-5M", "sizes cannot be negative"),
        ("1G-:", "the range '1G-' has no size after ':'"),
        ("2G-1G:128M", "the range '2G-1G' must end above its start"),
        ("2G-2G:128M", "the range '2G-2G' must end above its start"),
        (
            "auto",
            "'auto' was a RHEL-only kernel extension (RHEL 8 and older); mainline kernels "
            "reject it and reserve nothing, so give a size or size ranges instead",
        ),
        ("256M,medium", "unknown suffix ',medium' (the kernel knows ,high, ,low and ,cma)"),
        ("256M,HIGH", "the suffix must be lower case: ,high"),
        (
            "256MB",
            "the kernel takes a bare one-letter suffix (use K, M, G, T, P or E), "
            "not MB: write '256M'",
        ),
        ("2G-64G:256Q", "'256Q': unknown suffix 'Q' (use K, M, G, T, P or E)"),
        ("1G-2G", "a size range needs ':' and a size (START-[END]:SIZE)"),
        ("1G:128M", "expected '-' after '1G' (a range is START-[END]:SIZE)"),
        ("1G-2G:64M,", "a range is missing after the last ','"),
        ("256M@", "an offset is missing after '@'"),
        ("2G-64G:256M@", "an offset is missing after '@'"),
        ("128M@16Mx", "unexpected 'x' after '128M@16M'"),
        ("2G-:256M,high", "size ranges cannot be combined with ,high (only SIZE,high)"),
        ("128M@16M,low", "an @offset cannot be combined with ,low"),
        ("M,high", "expected a number, found 'M'"),
        ('"256M"', "the kernel does not strip quotes from crashkernel=; write it unquoted"),
        ("08M", "a leading 0 makes the kernel read octal, and '8' is not an octal digit"),
    ],
)
def test_parse_crashkernel_value_rejects(value: str, reason: str) -> None:
    with pytest.raises(CrashKernelSyntaxError) as info:
        parse_crashkernel_value(value)
    assert str(info.value) == f"invalid crashkernel={value}: {reason}"
    assert info.value.value == value and info.value.reason == reason
    assert isinstance(info.value, ValueError)


# --- reserved_bytes on machines of several sizes ---------------------------------


@pytest.mark.parametrize(
    ("value", "reserved"),
    [
        # 512M: the 64G- range asks for 512M, not below RAM, so the whole value is void.
        (FEDORA, (0, 0, 256 * M, 256 * M, 512 * M, 512 * M)),
        (FEDORA_OLD, (0, 192 * M, 192 * M, 256 * M, 512 * M, 512 * M)),
        # 1G: 32G-64G:1024M is read before any match and is not below 1G.
        (UBUNTU, (0, 0, 320 * M, 512 * M, 2048 * M, 4096 * M)),
        (UBUNTU_ZERO, (0, 0, 320 * M, 384 * M, 512 * M, 512 * M)),
        (UBUNTU_OLD, (64 * M, 64 * M, 128 * M, 128 * M, 128 * M, 128 * M)),
        (UBUNTU_FOCAL, (192 * M,) * 6),
        (DEBIAN, (128 * M,) * 6),
        ("256M", (256 * M,) * 6),
        ("128M@16M", (128 * M,) * 6),
        ("0x10000000", (256 * M,) * 6),
        ("0x80000000-:0x10000000", (0, 0, 256 * M, 256 * M, 256 * M, 256 * M)),
        ("512M,high", (0, 512 * M, 512 * M, 512 * M, 512 * M, 512 * M)),
        ("72M,low", (72 * M,) * 6),
        ("0,low", (0,) * 6),
        ("64M,cma", (64 * M,) * 6),
        ("0", (0,) * 6),
    ],
)
def test_reserved_bytes_by_ram(value: str, reserved: tuple[int, ...]) -> None:
    param = parse_crashkernel_value(value)
    assert tuple(param.reserved_bytes(ram) for ram in RAMS) == reserved


@pytest.mark.parametrize(
    ("ram", "reserved"),
    [
        (1920 * M, 0),  # already a multiple of 128M: stays below 2G
        (1920 * M + 1, 256 * M),  # rounds up to 2G
        (2 * G - 64 * M, 256 * M),  # 2G of DIMMs minus firmware
        (2 * G, 256 * M),
        (64 * G - 129 * M, 256 * M),  # rounds to 64G - 128M
        (64 * G - 100 * M, 512 * M),  # rounds to 64G
        (64 * G, 512 * M),
    ],
)
def test_ram_is_rounded_up_to_128m_at_range_boundaries(ram: int, reserved: int) -> None:
    assert parse_crashkernel_value(FEDORA).reserved_bytes(ram) == reserved


def test_first_matching_range_wins_and_later_ranges_are_not_checked() -> None:
    assert parse_crashkernel_value("0-1G:64M,1G-:2G").reserved_bytes(512 * M) == 64 * M
    # Read before the match, the oversized range voids everything.
    assert parse_crashkernel_value("1G-:2G,0-:64M").reserved_bytes(512 * M) == 0


def test_plain_size_must_be_below_ram() -> None:
    param = parse_crashkernel_value("2G")
    assert param.reserved_bytes(2 * G) == 0
    assert param.reserved_bytes(2 * G + 1) == 2 * G
    assert param.why_nothing(2 * G) == "2G is not less than the 2 GiB of RAM"
    assert param.why_nothing(4 * G) == ""


def test_why_nothing_explains_the_range_form() -> None:
    assert parse_crashkernel_value(FEDORA).why_nothing(1 * G) == "no range covers 1 GiB"
    assert parse_crashkernel_value(UBUNTU_ZERO).why_nothing(1 * G) == (
        "the matching range 0-2G asks for 0"
    )
    assert parse_crashkernel_value(UBUNTU).why_nothing(1 * G) == (
        "its range 32G-64G asks for 1G, not less than the 1 GiB of RAM, so the kernel "
        "rejects the whole value"
    )
    assert parse_crashkernel_value("256M").why_nothing(0) == "the amount of RAM is unknown"


# --- crashkernel_params ----------------------------------------------------------

DEBIAN_CMDLINE = (
    "BOOT_IMAGE=/boot/vmlinuz-6.1.0-28-amd64 root=UUID=0a86b691-f733-4cb0-9c5c-b88e0ef9e212 "
    "ro quiet crashkernel=384M-:128M\n"
)


def test_params_from_a_real_cmdline() -> None:
    assert crashkernel_params(DEBIAN_CMDLINE) == {"plain": parse_crashkernel_value(DEBIAN)}


def test_no_crashkernel() -> None:
    assert crashkernel_params("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet") == {}
    assert crashkernel_params("") == {}


def test_last_occurrence_of_each_kind_wins() -> None:
    params = crashkernel_params(
        "crashkernel=128M crashkernel=1G,high crashkernel=256M crashkernel=512M,high ro"
    )
    assert params["plain"].size == 256 * M
    assert params["high"].size == 512 * M
    assert set(params) == {"plain", "high"}


def test_an_invalid_earlier_value_is_overridden() -> None:
    assert crashkernel_params("crashkernel=auto crashkernel=256M")["plain"].size == 256 * M


def test_the_invalid_last_value_is_reported() -> None:
    with pytest.raises(CrashKernelSyntaxError, match=r"^invalid crashkernel=auto: 'auto' was"):
        crashkernel_params("crashkernel=256M crashkernel=auto")


def test_suse_high_and_low() -> None:
    params = crashkernel_params("root=/dev/sda2 crashkernel=242M,high crashkernel=72M,low splash")
    assert params == {
        "high": CrashKernelParam("242M,high", 242 * M, (), None, "high"),
        "low": CrashKernelParam("72M,low", 72 * M, (), None, "low"),
    }


def test_other_quoted_params_do_not_disturb() -> None:
    params = crashkernel_params('dyndbg="file drivers/usb/core/hub.c +p" crashkernel=256M quiet')
    assert params == {"plain": parse_crashkernel_value("256M")}


@pytest.mark.parametrize("cmdline", ['"crashkernel=256M" ro', 'ro crashkernel="256M"'])
def test_quoted_crashkernel_is_rejected_like_the_kernel_does(cmdline: str) -> None:
    # The kernel's strstr() parser keeps the quote and fails on it.
    with pytest.raises(CrashKernelSyntaxError, match="does not strip quotes"):
        crashkernel_params(cmdline)


def test_init_arguments_after_double_dash_still_count() -> None:
    # parse_crashkernel() scans the whole boot_command_line, "--" included.
    assert crashkernel_params("ro crashkernel=128M -- single crashkernel=256M")["plain"].size == (
        256 * M
    )


@pytest.mark.parametrize(
    ("cmdline", "message"),
    [
        ("ro crashkernel= quiet", "invalid crashkernel=: no value (write e.g. crashkernel=256M)"),
        ("crashkernel=12Q", "invalid crashkernel=12Q: unknown suffix 'Q' (use K, M, G, T, P or E)"),
        ("crashkernel=-5M", "invalid crashkernel=-5M: sizes cannot be negative"),
        ("crashkernel=1G-:", "invalid crashkernel=1G-:: the range '1G-' has no size after ':'"),
        (
            "crashkernel=2G-1G:128M",
            "invalid crashkernel=2G-1G:128M: the range '2G-1G' must end above its start",
        ),
        (
            "crashkernel=256M,medium",
            "invalid crashkernel=256M,medium: unknown suffix ',medium' "
            "(the kernel knows ,high, ,low and ,cma)",
        ),
        (
            "crashkernel=256M crashkernel=2G-:256M,high",
            "invalid crashkernel=2G-:256M,high: size ranges cannot be combined with ,high "
            "(only SIZE,high)",
        ),
    ],
)
def test_malformed_cmdlines(cmdline: str, message: str) -> None:
    with pytest.raises(CrashKernelSyntaxError) as info:
        crashkernel_params(cmdline)
    assert str(info.value) == message


# --- requested_bytes -------------------------------------------------------------


def test_default_low_by_architecture() -> None:
    assert default_low_bytes("x86_64") == 256 * M
    assert default_low_bytes("aarch64") == 128 * M
    assert default_low_bytes("riscv64") == 128 * M
    assert default_low_bytes("loongarch64") == 128 * M
    assert default_low_bytes("ppc64le") is None
    assert default_low_bytes("s390x") is None


@pytest.mark.parametrize(
    ("cmdline", "ram", "arch", "expected"),
    [
        ("crashkernel=256M", 4 * G, "x86_64", 256 * M),
        ("crashkernel=" + FEDORA, 1 * G, "x86_64", 0),
        ("crashkernel=" + FEDORA, 4 * G, "x86_64", 256 * M),
        ("crashkernel=" + FEDORA, 128 * G, "x86_64", 512 * M),
        ("crashkernel=242M,high crashkernel=72M,low", 4 * G, "x86_64", 314 * M),
        ("crashkernel=512M,high", 4 * G, "x86_64", 768 * M),  # + 256M default low
        ("crashkernel=512M,high", 4 * G, "aarch64", 640 * M),  # + 128M default low
        ("crashkernel=512M,high crashkernel=0,low", 4 * G, "x86_64", 512 * M),
        ("crashkernel=512M,high", 4 * G, "ppc64le", 0),  # no ,high support there
        ("crashkernel=512M,high", 512 * M, "x86_64", 0),  # high not below RAM
        ("crashkernel=512M,high crashkernel=256M", 4 * G, "x86_64", 256 * M),  # plain wins
        ("crashkernel=72M,low", 4 * G, "x86_64", 0),  # ,low alone does nothing
        ("crashkernel=256M crashkernel=64M,cma", 4 * G, "x86_64", 256 * M),  # cma is extra
        ("crashkernel=64M,cma", 4 * G, "x86_64", 0),
        ("ro quiet", 4 * G, "x86_64", 0),
    ],
)
def test_requested_bytes(cmdline: str, ram: int, arch: str, expected: int) -> None:
    assert requested_bytes(crashkernel_params(cmdline), ram, arch=arch) == expected


# --- /proc/iomem -----------------------------------------------------------------

# x86_64 QEMU guest, 4 GiB, booted with crashkernel=242M,high crashkernel=72M,low.
IOMEM_ROOT = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000a0000-000bffff : PCI Bus 0000:00
000c0000-000c99ff : Video ROM
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-7ffdafff : System RAM
  0b000000-0f7fffff : Crash kernel
  5e000000-5f0025c7 : Kernel code
  5f200000-5fc4afff : Kernel rodata
7ffdb000-7fffffff : Reserved
80000000-afffffff : PCI Bus 0000:00
b0000000-bfffffff : PCI MMCONFIG 0000 [bus 00-ff]
  b0000000-bfffffff : Reserved
fed00000-fed003ff : HPET 0
  fed00000-fed003ff : PNP0103:00
fee00000-fee00fff : Local APIC
fffc0000-ffffffff : Reserved
100000000-17fffffff : System RAM
  160000000-16f1fffff : Crash kernel
"""
IOMEM_RAM = (0x9FBFF - 0x1000 + 1) + (0x7FFDAFFF - 0x100000 + 1) + 0x80000000
LOW = IomemRange(0x0B000000, 0x0F7FFFFF, "Crash kernel")
HIGH = IomemRange(0x160000000, 0x16F1FFFFF, "Crash kernel")


def _hide(iomem: str) -> str:
    """/proc/iomem as a reader without CAP_SYS_ADMIN sees it."""
    lines = []
    for line in iomem.splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        lines.append(f"{indent}00000000-00000000 : {line.split(' : ', 1)[1]}")
    return "\n".join(lines) + "\n"


def test_parse_iomem_flattens_and_keeps_depth() -> None:
    ranges = parse_iomem(IOMEM_ROOT)
    assert len(ranges) == 21
    assert ranges[0] == IomemRange(0, 0xFFF, "Reserved")
    assert ranges[7] == IomemRange(0x100000, 0x7FFDAFFF, "System RAM")
    assert ranges[8] == LOW and ranges[8].depth == 1
    assert ranges[13].name == "PCI MMCONFIG 0000 [bus 00-ff]"
    assert ranges[-1] == HIGH and ranges[-1].depth == 1
    assert [r.depth for r in ranges].count(0) == 14


def test_crash_ranges_low_and_high() -> None:
    assert crash_ranges(IOMEM_ROOT) == [LOW, HIGH]
    assert [r.size for r in crash_ranges(IOMEM_ROOT)] == [72 * M, 242 * M]


def test_system_ram_sums_top_level_ranges() -> None:
    assert IOMEM_RAM == 4294417408
    assert system_ram_bytes(IOMEM_ROOT) == IOMEM_RAM


def test_hidden_addresses() -> None:
    hidden = _hide(IOMEM_ROOT)
    assert "  00000000-00000000 : Crash kernel" in hidden
    assert len(parse_iomem(hidden)) == 21
    assert crash_ranges(hidden) == []
    assert system_ram_bytes(hidden) == 0


def test_empty_iomem() -> None:
    assert parse_iomem("") == [] and crash_ranges("") == [] and system_ram_bytes("") == 0


# --- read_reservation ------------------------------------------------------------


def make_tree(
    root: Path,
    cmdline: str | None,
    crash_size: str | None,
    iomem: str | None,
    meminfo: str | None = None,
) -> Path:
    for rel, text in (
        ("proc/cmdline", cmdline),
        ("sys/kernel/kexec_crash_size", crash_size),
        ("proc/iomem", iomem),
        ("proc/meminfo", meminfo),
    ):
        if text is not None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    return root


FEDORA_CMDLINE = (
    "BOOT_IMAGE=(hd0,gpt2)/vmlinuz-6.8.5-301.fc40.x86_64 root=UUID=1eb5e7ee-43ad-40f6-b862-"
    "7986c8464659 ro rootflags=subvol=root rhgb quiet crashkernel=2G-64G:256M,64G-:512M\n"
)
IOMEM_FEDORA = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
00100000-bffdafff : System RAM
  2b000000-3affffff : Crash kernel
  9c000000-9d0025c7 : Kernel code
bffdb000-bfffffff : Reserved
100000000-13fffffff : System RAM
"""


def test_read_reservation_as_root(tmp_path: Path) -> None:
    root = make_tree(tmp_path, FEDORA_CMDLINE, "268435456\n", IOMEM_FEDORA)
    res = read_reservation(root)
    assert res == Reservation(
        cmdline=FEDORA_CMDLINE.rstrip("\n"),
        params={"plain": parse_crashkernel_value(FEDORA)},
        param_error="",
        reserved_bytes=256 * M,
        iomem=[IomemRange(0x2B000000, 0x3AFFFFFF, "Crash kernel")],
        ram_bytes=(0x9FBFF - 0x1000 + 1) + (0xBFFDAFFF - 0x100000 + 1) + 0x40000000,
    )
    assert res.ram_bytes == 4294417408
    assert requested_bytes(res.params, res.ram_bytes, arch="x86_64") == 256 * M


def test_read_reservation_high_and_low(tmp_path: Path) -> None:
    cmdline = "root=/dev/sda2 splash=silent crashkernel=242M,high crashkernel=72M,low\n"
    root = make_tree(tmp_path, cmdline, f"{314 * M}\n", IOMEM_ROOT)
    res = read_reservation(root)
    assert res.reserved_bytes == 314 * M
    assert res.iomem == [LOW, HIGH]
    assert sum(r.size for r in res.iomem) == res.reserved_bytes
    assert res.ram_bytes == IOMEM_RAM
    assert requested_bytes(res.params, res.ram_bytes, arch="x86_64") == 314 * M


def test_read_reservation_without_root_uses_meminfo(tmp_path: Path) -> None:
    cmdline = f"BOOT_IMAGE=/vmlinuz-6.8.0-31-generic ro crashkernel={UBUNTU}\n"
    meminfo = "MemTotal:        7650000 kB\nMemFree:         6000000 kB\n"
    root = make_tree(tmp_path, cmdline, f"{512 * M}\n", _hide(IOMEM_ROOT), meminfo)
    res = read_reservation(root)
    assert res.iomem == []
    assert res.reserved_bytes == 512 * M
    # MemTotal + the reservation + memmap (1/64), rounded up to 128M.
    assert res.ram_bytes == 8 * G
    assert requested_bytes(res.params, res.ram_bytes, arch="x86_64") == 512 * M


def test_read_reservation_meminfo_near_a_boundary(tmp_path: Path) -> None:
    # A 4 GiB guest with 256M reserved: MemTotal alone would look like 3.5 GiB.
    meminfo = f"MemTotal:        {4005012 - 256 * 1024} kB\n"
    root = make_tree(tmp_path, FEDORA_CMDLINE, f"{256 * M}\n", _hide(IOMEM_FEDORA), meminfo)
    assert read_reservation(root).ram_bytes == 4 * G


def test_read_reservation_on_an_empty_tree(tmp_path: Path) -> None:
    assert read_reservation(tmp_path) == Reservation("", {}, "", 0, [], 0)


def test_read_reservation_reports_a_bad_parameter(tmp_path: Path) -> None:
    root = make_tree(tmp_path, "ro crashkernel=auto\n", "0\n", IOMEM_FEDORA)
    res = read_reservation(root)
    assert res.params == {}
    assert res.param_error.startswith("invalid crashkernel=auto: 'auto' was a RHEL-only")
    assert res.reserved_bytes == 0


def test_read_reservation_ignores_garbage_crash_size(tmp_path: Path) -> None:
    root = make_tree(tmp_path, FEDORA_CMDLINE, "garbage\n", IOMEM_FEDORA)
    assert read_reservation(root).reserved_bytes == 0


# --- the capture estimate --------------------------------------------------------


def test_capture_estimate_current_calibration() -> None:
    # Pinned on purpose: recalibrating the constants changes these numbers.
    assert capture_estimate(1 * G, 8 * M, 10 * M) == CaptureEstimate(
        kernel=56 * M,
        initrd=30 * M,
        kernel_runtime=8 * M,
        userspace=40 * M,
        bitmap=64 * K,
        cpu_bytes=0,
        memmap=2231345,
        total=142806065,
        recommended=144 * M,
    )
    assert recommended_bytes(1 * G, 8 * M, 10 * M) == 144 * M
    # the guest of `make bench-reservation`, where 112M worked slowly and 128M at full speed
    assert recommended_bytes(1 * G, 8222656, 6055542) == 128 * M


def test_the_estimate_on_the_stock_guest_for_both_capture_modes() -> None:
    """The sizes `make bench-reservation` measured against (README, "Memory"): kdumpd's
    capture initramfs, and the stock Debian initramfs whose real unpacked size (132 MiB of
    31.5 MiB zstd, read by images.unpacked_size) the factor of 3 would have missed."""
    kernel = 8222656
    assert recommended_bytes(1 * G, kernel, 1812668, 5767168, "initramfs") == 96 * M
    assert recommended_bytes(4 * G, kernel, 1812668, 5767168, "initramfs") == 96 * M
    assert recommended_bytes(1 * G, kernel, 33049709, 138876416) == 272 * M
    assert recommended_bytes(1 * G, kernel, 33049709) == 208 * M  # the factor: too little


def test_capture_estimate_parts_add_up() -> None:
    e = capture_estimate(64 * G, 12 * M, 40 * M)
    base = e.kernel + e.initrd + e.kernel_runtime + e.userspace + e.bitmap + e.cpu_bytes
    assert e.total == base + e.memmap
    # The memmap covers the reservation itself: 64 bytes per 4K page, R = base + R/64.
    assert e.total == -(-base * 64 // 63)
    assert e.recommended % (16 * M) == 0
    assert e.total <= e.recommended < e.total + 16 * M


def test_bitmap_is_two_bits_per_page() -> None:
    assert capture_estimate(1 * T, 0, 0).bitmap == 64 * M
    assert capture_estimate(64 * G, 0, 0).bitmap == 4 * M


def test_recommended_grows_with_ram_kernel_and_initrd() -> None:
    small = recommended_bytes(1 * G, 8 * M, 30 * M)
    assert recommended_bytes(4 * T, 8 * M, 30 * M) > small
    assert recommended_bytes(1 * G, 16 * M, 30 * M) > small
    assert recommended_bytes(1 * G, 8 * M, 60 * M) > small


def test_recommended_never_below_128m() -> None:
    assert recommended_bytes(0, 0, 0) == 128 * M
    assert recommended_bytes(512 * M, 1 * M, 1 * M) == 128 * M


def test_nice_size() -> None:
    assert nice_size(0) == 16 * M
    assert nice_size(1) == 16 * M
    assert nice_size(176 * M) == 176 * M
    assert nice_size(176 * M + 1) == 192 * M


# --- assess ----------------------------------------------------------------------


def reservation(cmdline: str, reserved: int, ram: int) -> Reservation:
    try:
        params, error = crashkernel_params(cmdline), ""
    except CrashKernelSyntaxError as e:
        params, error = {}, str(e)
    return Reservation(cmdline, params, error, reserved, [], ram)


NO_RESERVATION = "the kernel reserved no memory for a crash kernel."
DMESG = (
    "was given but the kernel reserved nothing (look for 'crashkernel reservation failed' "
    "or 'cannot allocate crashkernel' in dmesg)."
)


@pytest.mark.parametrize(
    ("cmdline", "ram", "message"),
    [
        (
            "ro quiet",
            1 * G,
            "There is no crashkernel= on the kernel command line, so no memory is reserved "
            "for a crash kernel.",
        ),
        (
            "ro crashkernel=" + FEDORA,
            1 * G,
            "crashkernel=2G-64G:256M,64G-:512M reserves nothing on a machine with 1 GiB of RAM "
            "(no range covers 1 GiB).",
        ),
        (
            "ro crashkernel=" + FEDORA,
            1 * G - 100 * M,
            "crashkernel=2G-64G:256M,64G-:512M reserves nothing on a machine with 1 GiB of RAM "
            "(no range covers 1 GiB).",
        ),
        (
            "crashkernel=" + UBUNTU,
            1 * G,
            f"crashkernel={UBUNTU} reserves nothing on a machine with 1 GiB of RAM (its range "
            "32G-64G asks for 1G, not less than the 1 GiB of RAM, so the kernel rejects the "
            "whole value).",
        ),
        (
            "crashkernel=" + UBUNTU_ZERO,
            1536 * M,
            f"crashkernel={UBUNTU_ZERO} reserves nothing on a machine with 1.5 GiB of RAM "
            "(the matching range 0-2G asks for 0).",
        ),
        (
            "crashkernel=2G",
            2 * G,
            "crashkernel=2G reserves nothing on a machine with 2 GiB of RAM "
            "(2G is not less than the 2 GiB of RAM).",
        ),
        ("crashkernel=256M", 4 * G, f"crashkernel=256M {DMESG}"),
        (
            "crashkernel=128M@16M",
            4 * G,
            f"crashkernel=128M@16M {DMESG} A fixed @offset fails when that memory is in use; "
            "leave it out and the kernel chooses the address.",
        ),
        (
            "crashkernel=242M,high crashkernel=72M,low",
            4 * G,
            f"crashkernel=242M,high crashkernel=72M,low {DMESG}",
        ),
        (
            "crashkernel=auto",
            4 * G,
            "invalid crashkernel=auto: 'auto' was a RHEL-only kernel extension (RHEL 8 and "
            "older); mainline kernels reject it and reserve nothing, so give a size or size "
            f"ranges instead; {NO_RESERVATION}",
        ),
        (
            "crashkernel=",
            4 * G,
            f"invalid crashkernel=: no value (write e.g. crashkernel=256M); {NO_RESERVATION}",
        ),
        (
            "crashkernel=72M,low",
            4 * G,
            "crashkernel=72M,low alone reserves nothing: the kernel only uses ,low together "
            "with crashkernel=SIZE,high.",
        ),
        (
            "crashkernel=64M,cma",
            4 * G,
            "crashkernel=64M,cma alone reserves nothing: a ,cma area only adds to a normal "
            "crashkernel= reservation.",
        ),
    ],
)
def test_assess_none(cmdline: str, ram: int, message: str) -> None:
    verdict = assess(reservation(cmdline, 0, ram), 176 * M)
    assert verdict == Verdict("none", message, "crashkernel=176M")


def test_assess_none_suggests_at_least_the_minimum() -> None:
    verdict = assess(reservation("ro", 0, 4 * G), 176 * M, minimum=300 * M)
    assert verdict.state == "none" and verdict.suggestion == "crashkernel=304M"


def test_assess_too_small() -> None:
    verdict = assess(reservation("crashkernel=" + DEBIAN, 128 * M, 1 * G), 176 * M, 256 * M)
    assert verdict == Verdict(
        "too-small",
        "The kernel reserved 128 MiB for the crash kernel (crashkernel=384M-:128M), less than "
        "the configured minimum of 256 MiB.",
        "crashkernel=256M",
    )


def test_assess_below_recommended_debian_default() -> None:
    verdict = assess(reservation("crashkernel=" + DEBIAN, 128 * M, 1 * G), 176 * M)
    assert verdict == Verdict(
        "below-recommended",
        "The kernel reserved 128 MiB for the crash kernel (crashkernel=384M-:128M), below the "
        "176 MiB capture is estimated to need: the crash kernel may load, but at crash time "
        "it can run out of memory and hang without saving a dump.",
        "crashkernel=176M",
    )


def test_assess_below_recommended_high_low() -> None:
    res = reservation("crashkernel=242M,high crashkernel=72M,low", 314 * M, 4 * G)
    verdict = assess(res, 400 * M)
    assert verdict.state == "below-recommended"
    assert verdict.message.startswith(
        "The kernel reserved 314 MiB for the crash kernel "
        "(crashkernel=242M,high crashkernel=72M,low), below the 400 MiB"
    )
    assert verdict.suggestion == "crashkernel=400M"


def test_assess_ok() -> None:
    verdict = assess(reservation("crashkernel=" + FEDORA, 256 * M, 4 * G), 176 * M, 128 * M)
    assert verdict == Verdict(
        "ok",
        "The kernel reserved 256 MiB for the crash kernel (crashkernel=2G-64G:256M,64G-:512M); "
        "capture is estimated to need 176 MiB.",
        "",
    )


def test_assess_ok_exactly_at_recommended_and_minimum() -> None:
    verdict = assess(reservation("crashkernel=176M", 176 * M, 4 * G), 176 * M, 176 * M)
    assert verdict.state == "ok" and verdict.suggestion == ""


def test_assess_ok_mentions_an_ignored_bad_parameter() -> None:
    res = reservation("crashkernel=256M crashkernel=64Q,cma", 256 * M, 4 * G)
    verdict = assess(res, 176 * M)
    assert verdict.state == "ok"
    assert verdict.message == (
        "The kernel reserved 256 MiB for the crash kernel; capture is estimated to need "
        "176 MiB. Note: invalid crashkernel=64Q,cma: unknown suffix 'Q' "
        "(use K, M, G, T, P or E)."
    )


@pytest.mark.parametrize(
    ("recommended", "minimum", "suggestion"),
    [
        (176 * M, 0, "crashkernel=176M"),
        (200 * M, 0, "crashkernel=208M"),
        (200 * M + 1, 0, "crashkernel=208M"),
        (1024 * M, 0, "crashkernel=1G"),
        (1040 * M, 0, "crashkernel=1040M"),
        (1536 * M, 0, "crashkernel=1536M"),
        (176 * M, 300 * M, "crashkernel=304M"),
        (176 * M, 2 * G, "crashkernel=2G"),
    ],
)
def test_suggestion_is_a_nice_size(recommended: int, minimum: int, suggestion: str) -> None:
    res = reservation("crashkernel=64M", 64 * M, 4 * G)
    verdict = assess(res, recommended, minimum)
    assert verdict.state in ("too-small", "below-recommended")
    assert verdict.suggestion == suggestion


# --- the crash kernel's CPUs -------------------------------------------------------


def test_count_cpus_reads_sysfs_cpu_lists() -> None:
    assert count_cpus("0\n") == 1
    assert count_cpus("0-3\n") == 4
    assert count_cpus("0-3,8,10-11\n") == 7
    assert count_cpus("") == 1  # no sysfs: as nr_cpus=1 would make it


def test_big_machines_plan_more_capture_cpus() -> None:
    firmware_keeps = 640 * K  # an 8 GiB guest's System RAM in /proc/iomem falls short
    assert planned_cpus(1 * G, 16) == 1
    assert planned_cpus(4 * G, 16) == 1
    assert planned_cpus(8 * G - firmware_keeps, 16) == MAX_CAPTURE_CPUS == 4
    assert planned_cpus(8 * G, 2) == 2
    assert planned_cpus(64 * G, 1) == 1


def test_each_cpu_after_the_first_is_counted() -> None:
    one = capture_estimate(8 * G, 8 * M, 2 * M, 6 * M, "initramfs")
    four = capture_estimate(8 * G, 8 * M, 2 * M, 6 * M, "initramfs", cpus=4)
    assert (one.cpu_bytes, four.cpu_bytes) == (0, 3 * PER_CPU_BYTES)
    assert four.total - one.total >= 3 * PER_CPU_BYTES
    assert four.recommended > one.recommended


def test_capture_cpus_are_those_the_reservation_holds() -> None:
    def recommended(cpus: int) -> int:
        return recommended_bytes(8 * G, 8 * M, 2 * M, 6 * M, "initramfs", cpus)

    # 8 GiB: 96M for one CPU and for two, 112M for three and four
    assert [recommended(n) // M for n in (1, 2, 3, 4)] == [96, 96, 112, 112]
    assert capture_cpus(112 * M, 4, recommended) == 4  # booted with RecommendedBytes
    assert capture_cpus(111 * M, 4, recommended) == 2
    assert capture_cpus(96 * M, 4, recommended) == 2
    assert capture_cpus(16 * M, 4, recommended) == 1  # too small even for one: still one
    assert capture_cpus(1 * G, 1, recommended) == 1  # a small machine plans one


def test_sizing_recommends_the_usable_cpus_and_warns_only_below_one() -> None:
    def machine(reserved: int, apicid: int | None = 0) -> Reservation:
        return Reservation("", {}, "", reserved, [], 8 * G, online_cpus=8, boot_apicid=apicid)

    def cpus_and_need(
        res: Reservation, admin: int | None = None, arch: str = "x86_64"
    ) -> tuple[int, int, int, int, int, str]:
        s = sizing(res, 8 * M, 2 * M, 6 * M, "initramfs", admin, arch)
        return s.planned, s.usable, s.cpus, s.recommended // M, s.needed // M, s.why_one

    assert cpus_and_need(machine(112 * M)) == (4, 4, 4, 112, 112, "")
    assert cpus_and_need(machine(100 * M)) == (4, 4, 2, 112, 96, "")
    # x86 without the boot CPU's APIC ID: disable_cpu_apicid= cannot be written, one CPU
    no_apic = cpus_and_need(machine(112 * M, apicid=None))
    assert no_apic[:5] == (4, 1, 1, 96, 96) and "disable_cpu_apicid" in no_apic[5]
    assert cpus_and_need(machine(112 * M, apicid=None), arch="aarch64")[:3] == (4, 4, 4)
    # an admin's nr_cpus= decides, and is counted
    assert cpus_and_need(machine(96 * M), admin=3) == (3, 3, 3, 112, 112, "")


def test_the_boot_cpus_initial_apicid() -> None:
    cpuinfo = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\napicid\t\t: 2\ninitial apicid\t: 2\n\n"
        "processor\t: 1\ninitial apicid\t: 0\n\n"
    )
    assert boot_cpu_apicid(cpuinfo) == 2
    assert boot_cpu_apicid("processor\t: 0\nBogoMIPS\t: 50.00\n") is None  # arm64
    assert boot_cpu_apicid("") is None
