"""Capture on a big machine: the crash kernel with one CPU against several, makedumpfile
with threads and without.

A stock Debian 12 guest (Debian's default initramfs) with 4 vCPUs (--cpus) and 8 GiB, QEMU TCG,
crashkernel=256M. Before each crash a process holds FILL_MIB of random bytes (user pages,
which dump level 1 keeps), so makedumpfile has gigabytes to read and compress. The guest
is crashed three times (runs()). No assertions: numbers, and the makedumpfile command line
capture ran.

    python -m bench.big_machine      (make bench-big)
"""

from __future__ import annotations

import argparse
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


def runs(cpus: int) -> list[tuple[str, bytes]]:
    """As kdumpd arms the machine; its CPUs with makedumpfile threads, as an admin can ask
    (cmdline_append, makedumpfile_args; kdumpd itself uses threads only with makedumpfile
    1.7.8 or later, skew.threads_safe); its CPUs with makedumpfile unthreaded, which tells
    the CPUs' cost from the threads'."""
    cpus_line = f"cmdline_append: [nr_cpus={cpus}]\n"
    threads_line = f"makedumpfile_args: [--num-threads, '{cpus}']\n"
    return [
        ("kdumpd's default", b"dump_level: 1\n"),
        (f"{cpus} CPUs, {cpus} threads", f"dump_level: 1\n{cpus_line}{threads_line}".encode()),
        (f"{cpus} CPUs, unthreaded", f"dump_level: 1\n{cpus_line}".encode()),
    ]


def fill(g: Guest, timeout: float = 600.0) -> None:
    """Start the process that holds FILL_MIB of random pages; wait until it does."""
    g.write_file("/root/fill.py", FILLER.encode())
    g.run("rm -f /run/filled; systemd-run --unit=fill python3 /root/fill.py")
    deadline = time.monotonic() + timeout
    while g.run("test -e /run/filled", check=False).rc != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the filler did not hold {FILL_MIB} MiB in {timeout} s")
        time.sleep(1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=4, help="the guest's vCPUs (default 4)")
    cpus = parser.parse_args(argv).cpus
    work = Path(tempfile.mkdtemp(prefix="kdumpd-big-"))
    deb = build_deb(work)
    opts = BootOptions(append="crashkernel=256M", cpus=cpus, memory_mb=8192)
    rows = []
    with Guest(ensure_image(stock=True), work / "guest", "big", opts) as g:
        g.start()
        g.wait_booted(600)
        g.install_deb(deb)
        wait_armed(g)
        for name, config in runs(cpus):
            g.write_file("/etc/kdumpd/kdumpd.yaml", config)
            g.run("kdumpd reload")
            state = wait_armed(g)
            fill(g)
            timings = crash_and_come_back(g, "capture (?:complete|failed)")
            folder = g.run("ls -d /var/crash/*/ | tail -1").stdout.strip()
            meta = json.loads(g.read_file(f"{folder}metadata.json"))
            log = g.read_file(f"{folder}capture.log").decode(errors="replace")
            lines = [line for line in log.splitlines() if "makedumpfile -" in line]
            nr_cpus = next(p for p in state["CommandLine"].split() if p.startswith("nr_cpus="))
            rows.append((name, nr_cpus[8:], meta, timings, lines[0] if lines else "(none)"))
            g.run("rm -rf /var/crash/*")
        g.shutdown()
    print(f"\n8 GiB, {cpus} vCPUs, {FILL_MIB} MiB of random user pages, dump level 1, TCG")
    print(f"{'':22}{'nr_cpus':>8}{'capture (s)':>13}{'panic -> end (s)':>18}{'MiB':>7}  outcome")
    for name, nr_cpus, meta, timings, _ in rows:
        print(
            f"{name:22}{nr_cpus:>8}{meta['duration_s']:13.1f}"
            f"{timings['panic_to_dump_saved_s']:18.1f}{meta['size_bytes'] / 2**20:7.0f}  "
            f"{meta.get('error') or 'saved'}"
        )
    for name, _, _, _, command in rows:
        print(f"{name}: {command.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
