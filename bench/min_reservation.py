"""The smallest crashkernel= at which kdumpd still saves a complete dump (1 GiB guest, TCG).

For each size, largest first: boot a guest with crashkernel=SIZE, install kdumpd, crash it
and watch the console until the capture completes, fails, or the crash kernel dies (out of
memory, or a panic that reboots: QEMU runs with -no-reboot, so the guest just exits).
Prints one line per size and the smallest that worked; the anchor to beat is Debian's
kdump-tools, which needs 120M on this guest and hangs at 112M.

    python -m bench.min_reservation [SIZE_MB ...]      (default: 256 192 160 144 128 112 96)
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

from tests.vm.guest import BootOptions, Guest, GuestError, GuestTimeoutError
from tests.vm.image import ensure_image
from tests.vm.kdumpd_guest import build_deb, wait_state

DEFAULT_SIZES_MB = (256, 192, 160, 144, 128, 112, 96)
OUTCOME = re.compile(r"kdumpd: (capture complete|capture FAILED.*)|Out of memory|Kernel panic")


def attempt(size_mb: int, deb: Path, workdir: Path) -> str:
    opts = BootOptions(append=f"crashkernel={size_mb}M", reboot=False)
    with Guest(ensure_image(), workdir / f"m{size_mb}", f"m{size_mb}", opts) as g:
        g.start()
        g.wait_booted()
        g.install_deb(deb)
        state = wait_state(g)
        if state["State"] != "loaded":
            return f"not loaded: {state['LastError']}"
        recommended = f"(kdumpd recommends {int(state['RecommendedBytes']) >> 20}M)"
        t0 = time.monotonic()
        g.run("sync")  # the crash kernel reads the disk, not our page cache
        offset = g.crash()
        g.wait_console(r"Command line: .*elfcorehdr=", 300, offset)
        try:
            found = g.wait_console(OUTCOME, 900, g.console_offset())
        except (GuestTimeoutError, GuestError) as e:
            return f"no outcome: {str(e).splitlines()[0]} {recommended}"
        return f"{found.group(0)} after {time.monotonic() - t0:.0f} s {recommended}"


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv] or list(DEFAULT_SIZES_MB)
    work = Path(tempfile.mkdtemp(prefix="kdumpd-minres-"))
    deb = build_deb(work)
    smallest = None
    for size in sizes:
        outcome = attempt(size, deb, work)
        print(f"crashkernel={size}M: {outcome}", flush=True)
        if "capture complete" not in outcome:
            break
        smallest = size
    print(f"smallest working reservation: {f'{smallest}M' if smallest else 'none of these'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
