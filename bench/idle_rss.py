"""The daemon's resident memory at rest, in a stock Debian 12 guest (Debian's default
initramfs, 1 GiB, crashkernel=256M, QEMU TCG), with the package installed: VmRSS once
armed after the install (the daemon planned and built its capture initramfs), after a
`kdumpd reload` (the plan recalled), and after a reboot (recalled from the cache).
kdump-tools has no daemon (its unit is a oneshot): nothing of it stays resident, 0 in the
same run. No assertions: numbers.

    python -m bench.idle_rss
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.run import resident_mib
from tests.vm.guest import BootOptions, Guest
from tests.vm.image import ensure_image
from tests.vm.kdumpd_guest import build_deb, wait_armed


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="kdumpd-bench-rss-"))
    deb = build_deb(work)
    rows: dict[str, float] = {}
    options = BootOptions(append="crashkernel=256M")
    with Guest(ensure_image(stock=True), work / "guest", "kdumpd", options) as g:
        g.start()
        g.wait_booted()
        g.install_deb(deb)
        wait_armed(g)
        rows["armed after the install"] = resident_mib(g, "kdumpd.service")
        g.run("kdumpd reload")
        wait_armed(g)
        rows["after a reload"] = resident_mib(g, "kdumpd.service")
        offset = g.reboot()
        g.wait_console(r"Linux version", 300, offset)
        g.wait_booted()
        wait_armed(g)
        rows["after a reboot"] = resident_mib(g, "kdumpd.service")
        g.shutdown()
    print(f"\n{'VmRSS (kB)':32}{'kdumpd':>12}{'kdump-tools':>14}")
    for row, mib in rows.items():
        print(f"{row:32}{mib * 1024:12.0f}{0:14d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
