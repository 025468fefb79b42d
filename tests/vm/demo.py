"""`make demo`: a Debian 12 guest with kdumpd installed from its package; its D-Bus status,
a crash, the capture on the console, and the dump listed over D-Bus after the reboot."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from tests.vm.guest import BootOptions, Guest
from tests.vm.image import ensure_image
from tests.vm.kdumpd_guest import (
    BUSCTL,
    OBJ,
    build_deb,
    crash_and_come_back,
    wait_armed,
    wait_state,
)


def show(guest: Guest, command: str) -> None:
    print(f"\n[guest]# {command}", flush=True)
    result = guest.run(command, check=False)
    print((result.stdout + result.stderr).rstrip(), flush=True)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="kdumpd-demo-"))
    print("building the package and the guest image (cached after the first run)...")
    deb = build_deb(work)
    image = ensure_image()
    with Guest(image, work / "guest", "demo", BootOptions(append="crashkernel=256M")) as g:
        g.start()
        g.wait_booted()
        print(f"guest up; installing {deb.name}", flush=True)
        g.install_deb(deb)
        wait_armed(g)
        show(g, "systemctl is-active kdumpd")
        show(g, f"{BUSCTL} get-property {OBJ} State")
        show(g, f"{BUSCTL} call {OBJ} GetStatus")
        show(g, "kdumpd status")
        print("\n[guest]# echo c > /proc/sysrq-trigger", flush=True)
        offset = g.console_offset()
        timings = crash_and_come_back(g, "capture complete")
        capture = [
            line
            for line in g.console_text(offset).splitlines()
            if re.search(r"Kernel panic|kdumpd: |Command line:", line)
        ]
        print("\n--- serial console (excerpt) ---\n" + "\n".join(capture), flush=True)
        wait_state(g)
        show(g, "kdumpd dumps")
        show(g, f"{BUSCTL} call {OBJ} ListDumps")
        show(g, "ls -l /var/crash/*/")
        print("\n" + "\n".join(f"{k}: {v:.1f}" for k, v in timings.items()))
        g.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
