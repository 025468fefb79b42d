"""Capture on a big machine: the crash kernel with one CPU against the four kdumpd gives it.

A stock Debian 12 guest (Debian's default initramfs) with 4 vCPUs and 8 GiB, QEMU TCG,
crashkernel=256M. Before each crash a process holds FILL_MIB of random bytes (user pages,
which dump level 1 keeps), so makedumpfile has gigabytes to read and compress. The guest
is crashed twice: with `nr_cpus=1` in `cmdline_append` (one CPU, makedumpfile with one
thread), then as kdumpd arms a machine this size (reservation.planned_cpus: four CPUs,
`--num-threads 4`). No assertions: numbers, and the makedumpfile command line capture ran.

    python -m bench.big_machine      (make bench-big)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from tests.vm.guest import BootOptions, Guest
from tests.vm.image import ensure_image
from tests.vm.kdumpd_guest import build_deb, crash_and_come_back, wait_armed

FILL_MIB = 1024  # the guest disk is 3G: the dump must fit beside the system
FILLER = f"""
import os, signal
data = [os.urandom(1 << 20) for _ in range({FILL_MIB})]
open("/run/filled", "w").close()
signal.pause()
"""
RUNS = (
    ("1 CPU, 1 thread", b"dump_level: 1\ncmdline_append: [nr_cpus=1]\n"),
    ("4 CPUs, 4 threads", b"dump_level: 1\n"),
)


def fill(g: Guest, timeout: float = 600.0) -> None:
    """Start the process that holds FILL_MIB of random pages; wait until it does."""
    g.write_file("/root/fill.py", FILLER.encode())
    g.run("rm -f /run/filled; systemd-run --unit=fill python3 /root/fill.py")
    deadline = time.monotonic() + timeout
    while g.run("test -e /run/filled", check=False).rc != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the filler did not hold {FILL_MIB} MiB in {timeout} s")
        time.sleep(1)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="kdumpd-big-"))
    deb = build_deb(work)
    opts = BootOptions(append="crashkernel=256M", cpus=4, memory_mb=8192)
    rows = []
    with Guest(ensure_image(stock=True), work / "guest", "big", opts) as g:
        g.start()
        g.wait_booted(600)
        g.install_deb(deb)
        wait_armed(g)
        for name, config in RUNS:
            g.write_file("/etc/kdumpd/kdumpd.yaml", config)
            g.run("kdumpd reload")
            state = wait_armed(g)
            fill(g)
            timings = crash_and_come_back(g, "capture complete")
            folder = g.run("ls -d /var/crash/*/ | tail -1").stdout.strip()
            meta = json.loads(g.read_file(f"{folder}metadata.json"))
            log = g.read_file(f"{folder}capture.log").decode(errors="replace")
            command = next(line for line in log.splitlines() if "makedumpfile -" in line)
            cpus = next(p for p in state["CommandLine"].split() if p.startswith("nr_cpus="))
            rows.append((name, cpus, meta, timings, command))
            g.run("rm -rf /var/crash/*")
        g.shutdown()
    print(f"\n8 GiB, 4 vCPUs, {FILL_MIB} MiB of random user pages, dump level 1, TCG")
    print(f"{'':20}{'nr_cpus':>10}{'capture (s)':>13}{'panic -> saved (s)':>20}{'MiB':>8}")
    for name, cpus, meta, timings, _ in rows:
        print(
            f"{name:20}{cpus[8:]:>10}{meta['duration_s']:13.1f}"
            f"{timings['panic_to_dump_saved_s']:20.1f}{meta['size_bytes'] / 2**20:8.0f}"
        )
    for name, _, _, _, command in rows:
        print(f"{name}: {command.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
