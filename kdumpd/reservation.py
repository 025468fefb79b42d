"""The crash kernel reservation: what crashkernel= asks for, what the kernel
reserved, and whether that is enough for capture to finish.

Parsing follows kernel/crash_reserve.c (parse_crashkernel() and helpers) so
that "what would this value reserve" answers match the kernel, quirks included.
Everything here is pure except read_reservation(), which reads a sysroot.
"""

from __future__ import annotations

import math
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdumpd.sizes import SizeError, format_size, human_size, scan_size

__all__ = [
    "BIG_MACHINE_RAM",
    "BITMAP_BITS_PER_PAGE",
    "CAPTURE_USERSPACE_BYTES",
    "INITRD_UNPACK_FACTOR",
    "KERNEL_IMAGE_FACTOR",
    "KERNEL_RUNTIME_BYTES",
    "KINDS",
    "MAX_CAPTURE_CPUS",
    "PER_CPU_BYTES",
    "RAM_ROUNDING",
    "RECOMMENDED_ALIGN",
    "RECOMMENDED_FLOOR",
    "CaptureEstimate",
    "CrashKernelParam",
    "CrashKernelSyntaxError",
    "IomemRange",
    "Reservation",
    "Sizing",
    "Verdict",
    "assess",
    "boot_cpu_apicid",
    "capture_cpus",
    "capture_estimate",
    "count_cpus",
    "crash_ranges",
    "crashkernel_params",
    "crashkernel_values",
    "default_low_bytes",
    "nice_size",
    "parse_crashkernel_value",
    "parse_iomem",
    "planned_cpus",
    "read_reservation",
    "recommended_bytes",
    "requested_bytes",
    "sizing",
    "system_ram_bytes",
]

MiB = 1 << 20

KINDS = ("plain", "high", "low", "cma")
# Suffixes as kernel/crash_reserve.c:suffix_tbl spells them (case-sensitive).
# ",cma" is ≈6.16; older kernels take "64M,cma" for a (broken) plain value.
_SUFFIX_KIND = {",high": "high", ",low": "low", ",cma": "cma"}
_NAME = "crashkernel="

# parse_crashkernel_mem() rounds RAM up to 128M before matching ranges, because
# firmware keeps some memory and the usable size falls short of the DIMMs
# (since ≈5.17; older kernels compare the unrounded size).
RAM_ROUNDING = 128 * MiB

# DEFAULT_CRASH_KERNEL_LOW_SIZE, used when only crashkernel=X,high is given.
# x86_64: max(swiotlb size + 8M, 256M), i.e. 256M with the default 64M swiotlb
# (arch/x86/include/asm/crash_reserve.h); arm64, riscv64 and loongarch64 use the
# generic 128M (include/linux/crash_reserve.h). Other architectures (ppc64,
# s390x) have no ,high/,low support: the kernel ignores those forms there.
_DEFAULT_LOW = {
    "x86_64": 256 * MiB,
    "aarch64": 128 * MiB,
    "arm64": 128 * MiB,
    "riscv64": 128 * MiB,
    "loongarch64": 128 * MiB,
}

_AUTO_REASON = (
    "'auto' was a RHEL-only kernel extension (RHEL 8 and older); mainline kernels "
    "reject it and reserve nothing, so give a size or size ranges instead"
)


class CrashKernelSyntaxError(ValueError):
    """A crashkernel= value the kernel would reject (or that we cannot interpret)."""

    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"invalid crashkernel={value}: {reason}")
        self.value = value
        self.reason = reason


def _round_up(n: int, align: int) -> int:
    return -(-n // align) * align


def _range_text(start: int, end: int | None) -> str:
    return f"{format_size(start)}-{'' if end is None else format_size(end)}"


@dataclass(frozen=True)
class CrashKernelParam:
    """One crashkernel= value, parsed."""

    text: str  # the value as written, e.g. "2G-64G:256M,64G-:512M@16M"
    size: int | None  # the plain size form (and the ,high/,low/,cma forms)
    ranges: tuple[tuple[int, int | None, int], ...]  # (start, end or None = inf, size)
    offset: int | None  # @offset, when given
    kind: str  # "plain" | "high" | "low" | "cma"

    def _evaluate(self, ram_bytes: int) -> tuple[int, str]:
        """(bytes reserved on a machine with ram_bytes of RAM, why it is 0)."""
        if ram_bytes <= 0:
            return 0, "the amount of RAM is unknown"
        if self.ranges:
            total = _round_up(ram_bytes, RAM_ROUNDING)
            for start, end, size in self.ranges:
                # The kernel checks every range it reads up to the match, and one
                # oversized range invalidates the whole parameter.
                if size >= total:
                    return 0, (
                        f"its range {_range_text(start, end)} asks for {format_size(size)}, "
                        f"not less than the {human_size(total)} of RAM, so the kernel "
                        f"rejects the whole value"
                    )
                if start <= total and (end is None or total < end):
                    chosen = size
                    if chosen == 0:
                        return 0, f"the matching range {_range_text(start, end)} asks for 0"
                    break
            else:
                return 0, f"no range covers {human_size(total)}"
        else:
            chosen = self.size or 0
            if chosen == 0:
                return 0, "a size of 0 reserves nothing"
        # parse_crashkernel() rejects a crash size not below RAM; ,low and ,cma
        # sizes are not subject to that check.
        if self.kind in ("plain", "high") and chosen >= ram_bytes:
            return 0, f"{format_size(chosen)} is not less than the {human_size(ram_bytes)} of RAM"
        return chosen, ""

    def reserved_bytes(self, ram_bytes: int) -> int:
        """What this value reserves on a machine with ram_bytes of RAM (0 for nothing)."""
        return self._evaluate(ram_bytes)[0]

    def why_nothing(self, ram_bytes: int) -> str:
        """Why reserved_bytes(ram_bytes) is 0, or "" when it is not."""
        return self._evaluate(ram_bytes)[1]


def _kind_of(value: str) -> tuple[str, str]:
    """(kind, value without its suffix), classified as get_last_crashkernel() does."""
    for suffix, kind in _SUFFIX_KIND.items():
        if value.endswith(suffix):
            return kind, value[: -len(suffix)]
    return "plain", value


def parse_crashkernel_value(value: str) -> CrashKernelParam:
    """Parse the part after ``crashkernel=``: ``256M``, ``128M@16M``,
    ``2G-64G:256M,64G-:512M``, ``512M,high``, ``0,low``, ``64M,cma``."""

    def fail(reason: str) -> CrashKernelSyntaxError:
        return CrashKernelSyntaxError(value, reason)

    def scan(body: str, pos: int) -> tuple[int, int]:
        try:
            return scan_size(body, pos)
        except SizeError as err:
            if err.text in ("", body):
                raise fail(err.reason) from None
            raise fail(f"{err.text!r}: {err.reason}") from None

    def scan_offset(body: str, pos: int) -> tuple[int, int]:
        if pos >= len(body):
            raise fail("an offset is missing after '@'")
        return scan(body, pos)

    def unexpected(body: str, pos: int) -> CrashKernelSyntaxError:
        return fail(f"unexpected {body[pos:]!r} after {body[:pos]!r}")

    if value == "":
        raise fail("no value (write e.g. crashkernel=256M)")
    if '"' in value:
        # The kernel reads crashkernel= straight from the raw command line and
        # never strips quotes, so a quoted value is a syntax error to it.
        raise fail("the kernel does not strip quotes from crashkernel=; write it unquoted")
    kind, body = _kind_of(value)
    if body == "auto":
        raise fail(_AUTO_REASON)

    if kind != "plain":
        # parse_crashkernel_suffix(): exactly SIZE followed by the suffix.
        if ":" in body:
            raise fail(f"size ranges cannot be combined with ,{kind} (only SIZE,{kind})")
        if "@" in body:
            raise fail(f"an @offset cannot be combined with ,{kind}")
        size, end = scan(body, 0)
        if end != len(body):
            raise unexpected(body, end)
        return CrashKernelParam(text=value, size=size, ranges=(), offset=None, kind=kind)

    if ":" not in body:
        # parse_crashkernel_simple(): SIZE[@OFFSET]
        size, end = scan(body, 0)
        offset: int | None = None
        if end < len(body) and body[end] == "@":
            offset, end = scan_offset(body, end + 1)
        if end < len(body):
            rest = body[end:]
            if rest.lower() in _SUFFIX_KIND:
                raise fail(f"the suffix must be lower case: {rest.lower()}")
            if rest.startswith(","):
                raise fail(f"unknown suffix {rest!r} (the kernel knows ,high, ,low and ,cma)")
            if rest.startswith("-"):
                raise fail("a size range needs ':' and a size (START-[END]:SIZE)")
            raise unexpected(body, end)
        return CrashKernelParam(text=value, size=size, ranges=(), offset=offset, kind="plain")

    # parse_crashkernel_mem(): START-[END]:SIZE[,START-[END]:SIZE...][@OFFSET]
    ranges: list[tuple[int, int | None, int]] = []
    offset = None
    pos = 0
    while True:
        seg = pos
        start, pos = scan(body, pos)
        if pos >= len(body) or body[pos] != "-":
            raise fail(f"expected '-' after {body[seg:pos]!r} (a range is START-[END]:SIZE)")
        pos += 1
        limit: int | None = None
        if pos < len(body) and body[pos] != ":":
            limit, pos = scan(body, pos)
            if limit <= start:
                raise fail(f"the range {body[seg:pos]!r} must end above its start")
        if pos >= len(body) or body[pos] != ":":
            raise fail(f"expected ':' after the range {body[seg:pos]!r}")
        pos += 1
        if pos >= len(body) or body[pos] in ",@":
            raise fail(f"the range {body[seg : pos - 1]!r} has no size after ':'")
        size, pos = scan(body, pos)
        ranges.append((start, limit, size))
        if pos == len(body):
            break
        if body[pos] == ",":
            pos += 1
            if pos == len(body):
                raise fail("a range is missing after the last ','")
            continue
        if body[pos] == "@":
            offset, pos = scan_offset(body, pos + 1)
            if pos != len(body):
                raise unexpected(body, pos)
            break
        raise unexpected(body, pos)
    return CrashKernelParam(
        text=value, size=None, ranges=tuple(ranges), offset=offset, kind="plain"
    )


def crashkernel_values(cmdline: str) -> dict[str, str]:
    """The last crashkernel= value of each kind, found as the kernel finds them.

    get_last_crashkernel() does a plain strstr() for "crashkernel=" over the
    whole boot command line and ends each value at the next space. So, like the
    kernel, this does not stop at "--" (init's arguments still count), and a
    quoted value keeps its quotes (which then fail to parse, as in the kernel).
    """
    line = cmdline.rstrip("\n")
    values: dict[str, str] = {}
    pos = line.find(_NAME)
    while pos != -1:
        start = pos + len(_NAME)
        end = line.find(" ", start)
        value = line[start : len(line) if end == -1 else end]
        values[_kind_of(value)[0]] = value
        pos = line.find(_NAME, pos + 1)
    return values


def crashkernel_params(cmdline: str) -> dict[str, CrashKernelParam]:
    """The crashkernel= parameters of a full command line, keyed by kind.

    Keys are "plain", "high", "low" and "cma"; the last occurrence of each kind
    wins, as in the kernel. Raises CrashKernelSyntaxError for the first kind
    whose (last) value does not parse.
    """
    values = crashkernel_values(cmdline)
    return {kind: parse_crashkernel_value(values[kind]) for kind in KINDS if kind in values}


def default_low_bytes(arch: str | None = None) -> int | None:
    """The kernel's low reservation when only ,high is given; None where ,high
    and ,low are not supported."""
    return _DEFAULT_LOW.get(arch if arch is not None else platform.machine())


def requested_bytes(
    params: dict[str, CrashKernelParam], ram_bytes: int, arch: str | None = None
) -> int:
    """Total crash reservation the command line asks for on a machine with ram_bytes.

    A plain crashkernel= wins and ,high/,low are then ignored (parse_crashkernel()
    only looks for them when there is no plain one). With ,high alone the kernel
    adds DEFAULT_CRASH_KERNEL_LOW_SIZE (see default_low_bytes); crashkernel=0,low
    disables that. ,cma is an extra CMA area, not part of the crash reservation.
    Not predictable from the command line: a plain size that finds no room below
    4G falls back to high memory plus the default low part, and a ,high size
    that finds no room above 4G falls back to low memory without a low part.
    """
    plain = params.get("plain")
    if plain is not None:
        return plain.reserved_bytes(ram_bytes)
    high = params.get("high")
    default_low = default_low_bytes(arch)
    if high is None or default_low is None:
        return 0
    high_bytes = high.reserved_bytes(ram_bytes)
    if high_bytes == 0:
        return 0
    low = params.get("low")
    return high_bytes + (default_low if low is None else low.reserved_bytes(ram_bytes))


@dataclass(frozen=True)
class IomemRange:
    """One /proc/iomem line."""

    start: int
    end: int  # inclusive, as /proc/iomem prints it
    name: str
    # Nesting level (two spaces each); not part of equality so callers can
    # compare with IomemRange(start, end, name).
    depth: int = field(default=0, compare=False)

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    @property
    def hidden(self) -> bool:
        # Without CAP_SYS_ADMIN the kernel prints every range as 0-0.
        return self.start == 0 and self.end == 0


_IOMEM_LINE = re.compile(r"^( *)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")


def parse_iomem(text: str) -> list[IomemRange]:
    """Every range of a /proc/iomem text, flattened (depth kept in .depth)."""
    result = []
    for line in text.splitlines():
        match = _IOMEM_LINE.match(line)
        if match is None:
            continue
        indent, start, end, name = match.groups()
        result.append(IomemRange(int(start, 16), int(end, 16), name.strip(), len(indent) // 2))
    return result


def crash_ranges(text: str) -> list[IomemRange]:
    """The "Crash kernel" ranges (low and high); empty when addresses are hidden."""
    return [r for r in parse_iomem(text) if r.name.startswith("Crash kernel") and not r.hidden]


def system_ram_bytes(text: str) -> int:
    """Sum of the top-level "System RAM" ranges; 0 when addresses are hidden."""
    ram = [r for r in parse_iomem(text) if r.depth == 0 and r.name == "System RAM"]
    if any(r.hidden for r in ram):
        return 0
    return sum(r.size for r in ram)


@dataclass(frozen=True)
class Reservation:
    """The running kernel's crash reservation, as the system reports it."""

    cmdline: str  # the running kernel's /proc/cmdline
    params: dict[str, CrashKernelParam]
    param_error: str  # parse error text, "" when none
    reserved_bytes: int  # /sys/kernel/kexec_crash_size (the kernel's truth); 0 when missing
    iomem: list[IomemRange]  # Crash kernel ranges (empty when /proc/iomem hides addresses)
    ram_bytes: int  # RAM the crashkernel= ranges are evaluated against
    online_cpus: int = 1  # /sys/devices/system/cpu/online
    boot_apicid: int | None = None  # x86: processor 0's initial APIC ID (/proc/cpuinfo)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _meminfo_total(text: str) -> int:
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "MemTotal:" and fields[1].isdigit():
            unit = fields[2].lower() if len(fields) > 2 else ""
            return int(fields[1]) * (1024 if unit == "kb" else 1)
    return 0


# MemTotal leaves out the memmap (one 64-byte struct page per 4K page).
_STRUCT_PAGE_BYTES = 64
_PAGE_BYTES = 4096


def _ram_from_meminfo(mem_total: int, reserved: int) -> int:
    """Estimate the kernel's view of RAM from MemTotal (for non-root readers).

    MemTotal excludes the crash reservation itself and the memmap, so add both
    back; the kernel's image and firmware areas are also missing, which the
    round-up to 128M (as the kernel does for ranges) usually absorbs.
    """
    if mem_total <= 0:
        return 0
    usable = mem_total + reserved
    with_memmap = math.ceil(usable * _PAGE_BYTES / (_PAGE_BYTES - _STRUCT_PAGE_BYTES))
    return _round_up(with_memmap, RAM_ROUNDING)


def read_reservation(sysroot: Path = Path("/")) -> Reservation:
    """Read /proc/cmdline, /sys/kernel/kexec_crash_size, /proc/iomem and the RAM size."""
    cmdline = _read(sysroot / "proc/cmdline").rstrip("\n")
    params: dict[str, CrashKernelParam] = {}
    param_error = ""
    try:
        params = crashkernel_params(cmdline)
    except CrashKernelSyntaxError as err:
        param_error = str(err)

    size_text = _read(sysroot / "sys/kernel/kexec_crash_size").strip()
    reserved = int(size_text) if size_text.isdigit() else 0

    iomem_text = _read(sysroot / "proc/iomem")
    ram = system_ram_bytes(iomem_text)
    if ram == 0:
        ram = _ram_from_meminfo(_meminfo_total(_read(sysroot / "proc/meminfo")), reserved)
    return Reservation(
        cmdline=cmdline,
        params=params,
        param_error=param_error,
        reserved_bytes=reserved,
        iomem=crash_ranges(iomem_text),
        ram_bytes=ram,
        online_cpus=count_cpus(_read(sysroot / "sys/devices/system/cpu/online")),
        boot_apicid=boot_cpu_apicid(_read(sysroot / "proc/cpuinfo")),
    )


def boot_cpu_apicid(cpuinfo: str) -> int | None:
    """Processor 0's "initial apicid" in /proc/cpuinfo (x86); None when it has none."""
    for block in cpuinfo.split("\n\n"):
        pairs = (line.partition(":") for line in block.splitlines())
        fields = {key.strip(): value.strip() for key, _, value in pairs}
        if fields.get("processor") == "0":
            value = fields.get("initial apicid", "")
            return int(value) if value.isdigit() else None
    return None


def count_cpus(cpulist: str) -> int:
    """The number of CPUs in a sysfs CPU list ("0-3,8,10-11"); at least 1."""
    count = 0
    for part in cpulist.strip().split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (last or first).isdigit():
            count += int(last or first) - int(first) + 1
    return max(count, 1)


# --- How much memory capture needs -------------------------------------------
# Calibrated with `make bench-reservation` on 1 GiB Debian 12 guests (kernel 6.1, 8.0 MiB
# bzImage, QEMU TCG). Capture mode "system", on the tests' image (5.8 MiB initrd): works
# at 112M (slowly, under memory pressure) and 128M, out of memory at 96M while unpacking
# the initramfs. Capture mode "initramfs" on the stock image (1.8 MiB archive, 5.5 MiB
# unpacked): works at 96M; at 88M the kernel itself runs out of memory before /init
# (30 MiB available after its own 60 MiB, 13.7 MiB of it slab by then).

# What the crash kernel holds from its first instant: Debian's 6.1 bzImage of 8.0 MiB
# becomes 45 MiB of text, data, init and bss, plus ~13 MiB of early allocations (page
# tables, memory map, per-CPU areas): 58 MiB, about 7x the image.
KERNEL_IMAGE_FACTOR = 7
# The compressed initramfs stays until it is unpacked into tmpfs. Its unpacked size is
# read from the file where the format says it (images.unpacked_size: cpio, gzip, xz,
# zstd); otherwise it is taken as 2x (3x in all at the peak), as for the tests' image,
# though Debian's stock initramfs unpacks to 4.2x (31.5 MiB of zstd, 132 MiB unpacked).
INITRD_UNPACK_FACTOR = 3
# The capture kernel's allocations later on with nr_cpus=1: slab, /proc/vmcore's ELF
# headers, socket and block buffers.
KERNEL_RUNTIME_BYTES = 8 * MiB
# Resident memory of capture userspace: systemd, udev, journald, Python and makedumpfile,
# with the page cache capture needs to go at full speed (48 MiB left after boot at 112M
# was enough but slow; 64 MiB at 128M ran at full speed).
CAPTURE_USERSPACE_BYTES = 40 * MiB
# With kdumpd's own capture initramfs (kdumpd/environment.py) there is no systemd or udev:
# Python running the capture and makedumpfile, from the root file system's page cache
# (reclaimable), and the page cache for writing the dump. With it the 1 GiB stock guest's
# estimate is 96M, its measured minimum.
INITRAMFS_USERSPACE_BYTES = 16 * MiB
# makedumpfile keeps two bitmaps of one bit per 4K page of the crashed system's
# RAM; in cyclic mode they are cut into pieces, so this is an upper bound.
BITMAP_BITS_PER_PAGE = 2
# The crash kernel boots with one CPU (cmdline.APPEND), except on machines of
# BIG_MACHINE_RAM or more (rounded as crashkernel= ranges round it: firmware keeps some of
# the DIMMs), where makedumpfile has gigabytes to read, filter and compress:
# there it gets up to MAX_CAPTURE_CPUS, as many as the reservation holds, and makedumpfile
# a thread on each where its threads are safe (skew.threads_safe, capture.py). On a smaller
# machine the dump takes seconds, and bringing up more CPUs costs about what they would save.
BIG_MACHINE_RAM = 8 << 30
MAX_CAPTURE_CPUS = 4
# What each CPU after the first costs the crash kernel: its per-CPU areas and kthread
# stacks, SLUB's and the page allocator's per-CPU lists, a makedumpfile thread's buffers.
PER_CPU_BYTES = 6 * MiB
# Suggestions land on multiples of 16M (x86's CRASH_ALIGN) ...
RECOMMENDED_ALIGN = 16 * MiB
# ... and, booting the machine's systemd, never below 128M: under it, capture that fits
# still runs under memory pressure.
RECOMMENDED_FLOOR = 128 * MiB


@dataclass(frozen=True)
class CaptureEstimate:
    """What capture needs, by part (bytes)."""

    kernel: int
    initrd: int
    kernel_runtime: int
    userspace: int
    bitmap: int
    cpu_bytes: int  # for the crash kernel's CPUs after the first
    memmap: int  # struct pages for the crash kernel's own memory
    total: int  # sum of the above, unrounded
    recommended: int  # total rounded up to RECOMMENDED_ALIGN (system: RECOMMENDED_FLOOR at least)


def nice_size(n: int) -> int:
    """n rounded up to a crashkernel-friendly size (a multiple of 16M, at least 16M)."""
    return max(_round_up(n, RECOMMENDED_ALIGN), RECOMMENDED_ALIGN)


def capture_estimate(
    ram_bytes: int,
    kernel_size: int,
    initrd_size: int,
    unpacked_size: int = 0,
    mode: str = "system",
    cpus: int = 1,
) -> CaptureEstimate:
    """Estimate the crash reservation capture needs, part by part. `unpacked_size`: the
    initrd's size unpacked (images.unpacked_size); 0 when its format does not say, and it
    is estimated. mode "initramfs" is kdumpd's own capture initramfs, "system" the
    machine's initramfs, which boots systemd. cpus: the crash kernel's (Sizing.cpus)."""
    kernel = kernel_size * KERNEL_IMAGE_FACTOR
    bitmap = math.ceil(ram_bytes / _PAGE_BYTES * BITMAP_BITS_PER_PAGE / 8)
    initrd = initrd_size + (unpacked_size or initrd_size * (INITRD_UNPACK_FACTOR - 1))
    if mode == "initramfs":
        userspace, floor = INITRAMFS_USERSPACE_BYTES, 0
    else:
        userspace, floor = CAPTURE_USERSPACE_BYTES, RECOMMENDED_FLOOR
    extra_cpus = (cpus - 1) * PER_CPU_BYTES
    base = kernel + initrd + KERNEL_RUNTIME_BYTES + userspace + bitmap + extra_cpus
    # The crash kernel spends 64 bytes of memmap per 4K page of its own memory,
    # i.e. the reservation R must satisfy R >= base + R/64.
    total = math.ceil(base * _PAGE_BYTES / (_PAGE_BYTES - _STRUCT_PAGE_BYTES))
    return CaptureEstimate(
        kernel=kernel,
        initrd=initrd,
        kernel_runtime=KERNEL_RUNTIME_BYTES,
        userspace=userspace,
        bitmap=bitmap,
        cpu_bytes=extra_cpus,
        memmap=total - base,
        total=total,
        recommended=max(nice_size(total), floor),
    )


def recommended_bytes(
    ram_bytes: int,
    kernel_size: int,
    initrd_size: int,
    unpacked_size: int = 0,
    mode: str = "system",
    cpus: int = 1,
) -> int:
    """The crash reservation capture is estimated to need (see capture_estimate)."""
    estimate = capture_estimate(ram_bytes, kernel_size, initrd_size, unpacked_size, mode, cpus)
    return estimate.recommended


def planned_cpus(ram_bytes: int, online_cpus: int) -> int:
    """The CPUs the crash kernel is meant to have where nothing stands against it (sizing)."""
    if _round_up(ram_bytes, RAM_ROUNDING) < BIG_MACHINE_RAM:
        return 1
    return max(1, min(online_cpus, MAX_CAPTURE_CPUS))


def capture_cpus(reserved_bytes: int, planned: int, recommended: Callable[[int], int]) -> int:
    """The CPUs the crash kernel boots with: the most of the planned ones whose
    recommended reservation (recommended(cpus)) the one in effect holds; at least one."""
    return next((n for n in range(planned, 1, -1) if recommended(n) <= reserved_bytes), 1)


@dataclass(frozen=True)
class Sizing:
    """What capture needs on this machine, and the CPUs the crash kernel gets."""

    planned: int  # planned_cpus, or the admin's nr_cpus=
    usable: int  # planned, or 1 where more would not be safe (why_one says why)
    cpus: int  # capture_cpus: the usable ones the reservation in effect holds
    recommended: int  # RecommendedBytes: the need with the usable CPUs
    needed: int  # the need with `cpus`; less than that is the verdict's warning
    why_one: str  # why one CPU of several planned; "" otherwise


def sizing(
    res: Reservation,
    kernel_size: int,
    initrd_size: int,
    unpacked: int,
    mode: str,
    admin_cpus: int | None = None,
    machine: str = "x86_64",
) -> Sizing:
    """admin_cpus: an nr_cpus= in cmdline_append, which decides (and is counted). More CPUs
    pay off even where makedumpfile may not use threads (skew.threads_safe; the crash
    kernel decides that, capture.Capture._threads): the kernel's reads of /proc/vmcore and
    writeback run beside it (bench/big_machine.py: 33 s with four unthreaded against 49 s
    with one)."""

    def need(cpus: int) -> int:
        return recommended_bytes(res.ram_bytes, kernel_size, initrd_size, unpacked, mode, cpus)

    if admin_cpus:
        return Sizing(admin_cpus, admin_cpus, admin_cpus, need(admin_cpus), need(admin_cpus), "")
    planned = planned_cpus(res.ram_bytes, res.online_cpus)
    # A CPU other than the boot CPU that starts the crash kernel must not send INIT to the
    # boot CPU, which can reset the machine: disable_cpu_apicid= names it (cmdline.build;
    # kdump-utils' prepare_cmdline and SUSE's load.sh do the same).
    apic = "" if machine != "x86_64" or res.boot_apicid is not None else (
        "the boot CPU's initial APIC ID is not in /proc/cpuinfo, and a crash kernel with "
        "more CPUs needs it (disable_cpu_apicid=)"
    )  # fmt: skip
    why_one = apic if planned > 1 else ""
    usable = 1 if why_one else planned
    cpus = capture_cpus(res.reserved_bytes, usable, need)
    return Sizing(planned, usable, cpus, need(usable), need(cpus), why_one)


# --- Verdict ------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    state: str  # "ok" | "none" | "too-small" | "below-recommended"
    message: str  # what was found and why it is a problem
    suggestion: str  # the crashkernel= to put on the kernel command line; "" when ok


def _given(params: dict[str, CrashKernelParam]) -> str:
    """The crashkernel= parameters that decide the reservation, as written."""
    if "plain" in params:
        return f"crashkernel={params['plain'].text}"
    if "high" in params:
        parts = [params["high"]] + ([params["low"]] if "low" in params else [])
        return " ".join(f"crashkernel={p.text}" for p in parts)
    return ""


def _why_none(res: Reservation) -> str:
    params = res.params
    if res.param_error:
        return f"{res.param_error}; the kernel reserved no memory for a crash kernel."
    given = _given(params)
    if not given:
        if "low" in params:
            return (
                f"crashkernel={params['low'].text} alone reserves nothing: the kernel only "
                f"uses ,low together with crashkernel=SIZE,high."
            )
        if "cma" in params:
            return (
                f"crashkernel={params['cma'].text} alone reserves nothing: a ,cma area only "
                f"adds to a normal crashkernel= reservation."
            )
        return (
            "There is no crashkernel= on the kernel command line, so no memory is "
            "reserved for a crash kernel."
        )
    decisive = params.get("plain") or params["high"]
    if res.ram_bytes > 0 and decisive.reserved_bytes(res.ram_bytes) == 0:
        ram = res.ram_bytes
        if decisive.ranges:
            ram = _round_up(ram, RAM_ROUNDING)
        return (
            f"{given} reserves nothing on a machine with {human_size(ram)} of RAM "
            f"({decisive.why_nothing(res.ram_bytes)})."
        )
    if "plain" not in params and default_low_bytes() is None:
        return f"{given} reserves nothing here: this architecture has no ,high/,low reservations."
    message = (
        f"{given} was given but the kernel reserved nothing (look for 'crashkernel "
        f"reservation failed' or 'cannot allocate crashkernel' in dmesg)."
    )
    if decisive.offset:
        message += (
            " A fixed @offset fails when that memory is in use; leave it out and "
            "the kernel chooses the address."
        )
    return message


def assess(res: Reservation, recommended: int, minimum: int = 0) -> Verdict:
    """Judge the reservation against what capture needs (recommended) and the
    configured floor (minimum)."""
    suggestion = f"crashkernel={format_size(nice_size(max(recommended, minimum)))}"
    reserved = res.reserved_bytes
    if reserved == 0:
        return Verdict("none", _why_none(res), suggestion)

    given = _given(res.params)
    found = f"The kernel reserved {human_size(reserved)} for the crash kernel" + (
        f" ({given})" if given else ""
    )
    note = f" Note: {res.param_error}." if res.param_error else ""
    if reserved < minimum:
        return Verdict(
            "too-small",
            f"{found}, less than the configured minimum of {human_size(minimum)}.{note}",
            suggestion,
        )
    if reserved < recommended:
        return Verdict(
            "below-recommended",
            f"{found}, below the {human_size(recommended)} capture is estimated to need: "
            f"the crash kernel may load, but at crash time it can run out of memory and "
            f"hang without saving a dump.{note}",
            suggestion,
        )
    return Verdict(
        "ok",
        f"{found}; capture is estimated to need {human_size(recommended)}.{note}",
        "",
    )
