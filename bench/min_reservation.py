"""The smallest crashkernel= at which each service still saves a complete dump, on the
stock image (Debian 12 with its default initramfs, 1 GiB guest, TCG), kdumpd beside
kdump-tools in the same run.

For each service and size, largest first: boot a guest with crashkernel=SIZE, install the
service, reboot (kdump-tools builds its initramfs at install), crash it and watch the
console until the dump is saved, capture fails, or the crash kernel dies (out of memory,
or a panic that reboots: QEMU runs with -no-reboot, so the guest just exits). Prints one
line per attempt and the smallest that worked.

    python -m bench.min_reservation [SERVICE ...] [--memory MIB] [SIZE_MB ...]
        (SERVICE: kdumpd, kdump-tools (default: both), kdumpd-system (kdumpd's fallback
        capture mode, the machine's own initramfs and systemd); a 1 GiB guest;
        128 120 112 104 96 88 80 72)
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

from bench.run import Service, install_kdump_tools
from tests.vm.guest import BootOptions, Guest, GuestError, GuestTimeoutError
from tests.vm.image import ensure_image
from tests.vm.kdumpd_guest import build_deb, crash_loaded, wait_armed

DEFAULT_SIZES_MB = (128, 120, 112, 104, 96, 88, 80, 72)
FAILURE = r"kdumpd: capture FAILED.*|Out of memory|Kernel panic"


def attempt(service: Service, size_mb: int, memory_mb: int, workdir: Path) -> str:
    opts = BootOptions(memory_mb=memory_mb, append=f"crashkernel={size_mb}M", reboot=False)
    name = f"{service.name}-{memory_mb}-{size_mb}"
    with Guest(ensure_image(stock=True), workdir / name, name, opts) as g:
        g.start()
        g.wait_booted()
        service.install(g)
        note = ""
        if service.name.startswith("kdumpd"):
            state = wait_armed(g, "system" if service.name == "kdumpd-system" else "initramfs")
            note = f" (kdumpd recommends {int(state['RecommendedBytes']) >> 20}M)"
        if crash_loaded(g) != "1":
            return "not loaded"
        t0 = time.monotonic()
        g.run("sync")  # the crash kernel reads the disk, not our page cache
        offset = g.crash()
        offset += g.wait_console(r"Command line: .*elfcorehdr=", 300, offset).end()
        outcome = re.compile(f"({service.saved})|{FAILURE}")
        try:
            found = g.wait_console(outcome, 900, offset)
        except (GuestTimeoutError, GuestError) as e:
            return f"no outcome: {str(e).splitlines()[0]}{note}"
        verdict = "dump saved" if found.group(1) else found.group(0)
        return f"{verdict} after {time.monotonic() - t0:.0f} s{note}"


def main(argv: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="kdumpd-minres-"))
    deb = build_deb(work)

    def kdumpd_system(g: Guest) -> None:
        """The fallback capture mode, as an initrd in the config arms it."""
        g.install_deb(deb)
        initrd = f"/boot/initrd.img-{g.run('uname -r').stdout.strip()}"
        g.write_file("/etc/kdumpd/kdumpd.yaml", f"initrd: {initrd}\n".encode())
        g.run("kdumpd reload")

    services = [
        Service("kdumpd", "kdumpd.service", lambda g: g.install_deb(deb), r"kdumpd: dump saved"),
        Service("kdump-tools", "kdump-tools.service", install_kdump_tools, r"saved vmcore in"),
        Service("kdumpd-system", "kdumpd.service", kdumpd_system, r"kdumpd: dump saved"),
    ]
    memory_mb = 1024
    if "--memory" in argv:
        at = argv.index("--memory")
        memory_mb = int(argv[at + 1])
        del argv[at : at + 2]
    chosen = [s for s in services if s.name in argv] or services[:2]
    sizes = [int(a) for a in argv if a.isdigit()] or list(DEFAULT_SIZES_MB)
    print(f"stock image, {memory_mb} MiB guest, TCG", flush=True)
    for service in chosen:
        smallest = None
        for size in sizes:
            outcome = attempt(service, size, memory_mb, work)
            print(f"{service.name} crashkernel={size}M: {outcome}", flush=True)
            if not outcome.startswith("dump saved"):
                break
            smallest = size
        found = f"{smallest}M" if smallest else "none of these"
        print(f"{service.name}: smallest working reservation: {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
