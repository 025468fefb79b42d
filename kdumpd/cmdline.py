"""The capture kernel's command line: the running one, minus what must not reach it, plus
what capture needs."""

from __future__ import annotations

CAPTURE_TARGET = "kdumpd-capture.target"

# Parameters that would make the crash kernel reserve memory it does not have, hide its
# console, or start the normal boot instead of capture.
REMOVE = (
    "crashkernel",
    "hugepages",
    "hugepagesz",
    "default_hugepagesz",
    "hugetlb_cma",
    "cma",
    "quiet",
    "splash",
    "log_buf_len",
    "swiotlb",
    "slub_debug",
    "panic_on_warn",
    "isolcpus",
    "nohz_full",
    "nr_cpus",
    "maxcpus",
    "BOOT_IMAGE",
    "initrd",
    "init",
    "rdinit",  # the capture initramfs's /init must run, not the one the machine names
    "systemd.unit",
    "rd.systemd.unit",
    "elfcorehdr",
)

# What kdump-utils and kdump-tools agree on: one CPU (more on a big machine, build's
# cpus), tolerate devices left mid-DMA by the dead kernel, reboot by itself if the crash
# kernel panics too.
APPEND = (
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
# Capture mode "system" boots the machine's own initramfs and systemd: straight into capture.
APPEND_SYSTEM = (
    "udev.children-max=1",
    f"systemd.unit={CAPTURE_TARGET}",
    # sysinit.target units that only cost time in capture: flushing (and rotating) the
    # dead system's journal, its utmp boot record, binfmt registration.
    "systemd.mask=systemd-journal-flush.service",
    "systemd.mask=systemd-update-utmp.service",
    "systemd.mask=systemd-binfmt.service",
)
# Firmware and memory features that cost memory or hang in a crash kernel on x86.
APPEND_X86 = ("mce=off", "numa=off", "acpi_no_memhotplug", "hest_disable", "nokaslr")

# The kernel appends " elfcorehdr=0x<addr> " to a crash kernel's command line.
ELFCOREHDR_RESERVE = 32


class CmdlineTooLong(ValueError):
    pass


def split(cmdline: str) -> list[str]:
    """Split like the kernel does: on white space, except inside double quotes."""
    params: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in cmdline:
        if ch == '"':
            quoted = not quoted
        if ch.isspace() and not quoted:
            if current:
                params.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        params.append("".join(current))
    return params


def name(param: str) -> str:
    return param.split("=", 1)[0]


# Parameters that may be given many times, each adding a value: they replace nothing.
REPEATABLE = ("systemd.mask", "systemd.wants")


def _key(param: str) -> str:
    return param if name(param) in REPEATABLE else name(param)


def appended_cpus(append: tuple[str, ...]) -> int | None:
    """The nr_cpus= an admin put in cmdline_append (it replaces kdumpd's), if any."""
    values = [p.partition("=")[2] for p in append if name(p) == "nr_cpus"]
    return int(values[-1]) if values and values[-1].isdigit() and int(values[-1]) > 0 else None


def _matches(param: str, pattern: str) -> bool:
    """'quiet' removes quiet and quiet=...; 'console=tty0' removes only that exact one."""
    return param == pattern if "=" in pattern else name(param) == pattern


def build(
    running: str,
    remove: tuple[str, ...] = (),
    append: tuple[str, ...] = (),
    machine: str = "x86_64",
    max_len: int = 2047,
    system: bool = True,
    cpus: int = 1,
    boot_apicid: int | None = None,
) -> str:
    """The capture command line. Parameters in `append` replace same-named defaults;
    `remove` applies to the running command line and to the defaults. `system`: the crash
    kernel boots the machine's systemd (else kdumpd's own initramfs). cpus: its nr_cpus=
    (reservation.sizing), with disable_cpu_apicid=boot_apicid on x86 when more than one."""
    params = split(running)
    if "--" in params:  # what follows belongs to init, not to the kernel
        params = params[: params.index("--")]
    extra = [
        *(f"nr_cpus={cpus}" if p == "nr_cpus=1" else p for p in APPEND),
        *(APPEND_SYSTEM if system else ()),
        *(APPEND_X86 if machine == "x86_64" else ()),
        *(
            [f"disable_cpu_apicid={boot_apicid}"]
            if cpus > 1 and machine == "x86_64" and boot_apicid is not None
            else []
        ),
    ]
    user_keys = {_key(p) for p in append}
    added = [
        p for p in extra if _key(p) not in user_keys and not any(_matches(p, r) for r in remove)
    ] + list(append)
    added_keys = {_key(p) for p in added}
    kept = [
        p
        for p in params
        if _key(p) not in added_keys and not any(_matches(p, r) for r in (*REMOVE, *remove))
    ]
    result = " ".join(kept + added)
    size = len(result.encode())  # the kernel's limit is in bytes, not characters
    if size > max_len - ELFCOREHDR_RESERVE:
        raise CmdlineTooLong(
            f"capture command line is {size} bytes; the kernel accepts {max_len} "
            f"and needs {ELFCOREHDR_RESERVE} of them for elfcorehdr= (shorten it with "
            f"cmdline_remove): {result[:80]}..."
        )
    return result
