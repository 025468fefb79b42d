"""Does the installed makedumpfile support the kernel it will dump?

Each makedumpfile release knows kernels up to its LATEST_VERSION (makedumpfile.h). At
crash time get_kernel_version() (makedumpfile.c) compares the dumped kernel's release
with it and, for a newer kernel, prints "The kernel version is not supported." and "The
makedumpfile operation may be incomplete.", then writes the dump anyway: with structures
it misreads, a dump that is wrong, incomplete or much too big. Debian 12's 1.7.2 (up to
6.0.1) with its own 6.1 kernel is such a pair. This says so before the crash.

The binary holds LATEST_VERSION only as an immediate operand in machine code, so it
cannot be read back reliably; the binary's version string can, and LATEST_VERSION comes
from the table below. Everything here is pure except installed_version(), which reads
the binary under a sysroot.

The same version says whether makedumpfile may use threads (threads_safe).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "LATEST_VERSION",
    "installed_path",
    "installed_version",
    "kernel_version",
    "parse_version",
    "threads_refusal",
    "threads_safe",
    "warning",
]

Version = tuple[int, int, int]

# LATEST_VERSION in makedumpfile.h at each release tag of
# github.com/makedumpfile/makedumpfile (1.6.0 to 1.6.7 are tagged Released-1-6-N).
# LATEST_VERSION only ever rises from one release to the next.
LATEST_VERSION: dict[Version, Version] = {
    (1, 6, 0): (4, 5, 3),
    (1, 6, 1): (4, 8, 1),
    (1, 6, 2): (4, 11, 7),
    (1, 6, 3): (4, 14, 8),
    (1, 6, 4): (4, 17, 0),
    (1, 6, 5): (4, 19, 4),
    (1, 6, 6): (5, 1, 9),
    (1, 6, 7): (5, 4, 8),
    (1, 6, 8): (5, 9, 4),
    (1, 6, 9): (5, 12, 1),
    (1, 7, 0): (5, 15, 0),
    (1, 7, 1): (5, 17, 1),
    (1, 7, 2): (6, 0, 1),
    (1, 7, 3): (6, 3, 0),
    (1, 7, 4): (6, 6, 0),
    (1, 7, 5): (6, 8, 4),
    (1, 7, 6): (6, 11, 4),
    (1, 7, 7): (6, 14, 2),
    (1, 7, 8): (6, 17, 4),
    (1, 7, 9): (7, 0, 0),
}

# Before 1.7.8, --num-threads corrupts dumps: the worker threads and the main thread share
# page_flag_buf->ready without a lock or an atomic (makedumpfile commit 65bf4c9, "Fix a
# data race in multi-threading mode", issue makedumpfile#15: "uncompress failed" in
# crash). The main thread also spins on those flags: in a 4-vCPU TCG guest, 1.7.2 with
# --num-threads 4 took 4x as long as one thread (bench/big_machine.py).
THREADS_SAFE: Version = (1, 7, 8)


def threads_safe(version: Version | None) -> bool:
    """Whether this makedumpfile may run with --num-threads."""
    return version is not None and version >= THREADS_SAFE


def threads_refusal(version: Version | None) -> str:
    """Why this makedumpfile may not use threads, in words; "" when it may."""
    if threads_safe(version):
        return ""
    found = f"makedumpfile {_dotted(version)}" if version else "no makedumpfile version found"
    return (
        f"{found}; before {_dotted(THREADS_SAFE)} makedumpfile corrupts dumps written with "
        "--num-threads (a data race, makedumpfile issue 15)"
    )


# print_info.c:show_version(), one string literal in the binary and the first line of
# `makedumpfile -v`: "makedumpfile: version 1.7.2 (released on 20 Oct 2022)".
_VERSION_LINE = re.compile(rb"makedumpfile: version ([0-9][0-9A-Za-z.+~_-]*) \(released on")
_BINARY_MAX = 16 << 20  # Debian's is 418 KiB; a bound, not a guess at its size


def _dotted(v: Version) -> str:
    return ".".join(map(str, v))


def kernel_version(release: str) -> Version:
    """A kernel release as get_kernel_version() reads it: three numbers with strtol, each
    after one separator ("6.1.0-26-amd64" is 6.1.0, "6.12.57+deb13-amd64" 6.12.57,
    "6.10-rc1" 6.10.0: strtol reads no digits from "rc1")."""
    numbers = []
    rest = release
    for _ in range(3):
        digits = re.match(r"[0-9]*", rest)
        assert digits is not None  # [0-9]* matches the empty string
        numbers.append(int(digits.group() or 0))
        rest = rest[digits.end() + 1 :]
    return numbers[0], numbers[1], numbers[2]


def parse_version(data: bytes) -> Version | None:
    """makedumpfile's own version, from the binary's bytes (or `makedumpfile -v`);
    "1.7.9++" (a build after 1.7.9) is 1.7.9. None when there is no version line."""
    found = _VERSION_LINE.search(data)
    if found is None:
        return None
    numbers = re.match(rb"([0-9]+)\.([0-9]+)(?:\.([0-9]+))?", found.group(1))
    if numbers is None:
        return None
    major, minor, patch = numbers.groups()
    return int(major), int(minor), int(patch or 0)


def installed_path(sysroot: Path) -> Path | None:
    """The makedumpfile capture runs, as capture finds it on PATH."""
    from kdumpd import environment  # here: the crash kernel imports this module too

    try:
        return sysroot / environment.which(sysroot, "makedumpfile").lstrip("/")
    except environment.Unreachable:
        return None


def installed_version(sysroot: Path) -> Version | None:
    """The version of the makedumpfile capture runs, read from the binary without running
    it; None when none is installed or it names no version."""
    path = installed_path(sysroot)
    if path is None:
        return None
    try:
        with path.open("rb") as f:
            return parse_version(f.read(_BINARY_MAX))
    except OSError:
        return None


def warning(makedumpfile: Version | None, release: str) -> str:
    """What to tell the administrator when this makedumpfile does not support the kernel
    `release`; "" when it does, or when that cannot be known.

    A version missing from the table is bounded by the next release in it (LATEST_VERSION
    only rises), so a build between two releases is still judged. A makedumpfile newer than the
    whole table gets no warning: its LATEST_VERSION is unknown, and a warning that may be
    false would teach administrators to ignore the true ones.
    """
    if makedumpfile is None:
        return ""
    later = [r for r in LATEST_VERSION if r >= makedumpfile]
    if not later:
        return ""
    latest = LATEST_VERSION[min(later)]
    kernel = kernel_version(release)
    if kernel <= latest:
        return ""
    fixed = [r for r, v in LATEST_VERSION.items() if v >= kernel]
    if fixed:
        advice = f"makedumpfile {_dotted(min(fixed))} or later supports it"
    else:
        newest = max(LATEST_VERSION)
        advice = f"no release up to makedumpfile {_dotted(newest)} supports it yet"
    return (
        f"makedumpfile {_dotted(makedumpfile)} supports kernels up to "
        f"{_dotted(latest)}, and kernel {release} is newer: at crash time makedumpfile "
        f'will say "The kernel version is not supported" and the dump may be wrong or '
        f"incomplete ({advice})."
    )
