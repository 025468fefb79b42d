"""Which makedumpfile compression kdumpd should use by default: speed and size, measured.

One crash of a 1 GiB guest (crashkernel=256M) is captured uncompressed as ELF with dump
level 31. Back in the normal kernel, makedumpfile re-writes that same dump once per
compression this makedumpfile supports (Debian 12's 1.7.2: lzo and zlib; no zstd),
single-threaded like in the crash kernel, with the input already in the page cache so the
numbers compare compression, not the disk. Prints seconds and MiB per method.

    python -m bench.compression      (make bench-compression)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from kdumpd.capture import COMPRESSION_FLAGS, supported_compressions
from tests.vm.guest import BootOptions, Guest
from tests.vm.image import ensure_image
from tests.vm.kdumpd_guest import build_deb, wait_state

CONFIG = b'compression: none\nmakedumpfile_args: ["-E"]\n'


def timed(g: Guest, command: str) -> float:
    """Seconds the guest spent on `command`, by the guest's own monotonic clock."""
    out = g.run(
        [
            "python3",
            "-c",
            "import subprocess, sys, time; t = time.monotonic(); "
            "subprocess.run(sys.argv[1], shell=True, check=True, capture_output=True); "
            "print(time.monotonic() - t)",
            command,
        ],
        timeout=900,
    ).stdout
    return float(out)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="kdumpd-compression-"))
    deb = build_deb(work)
    opts = BootOptions(append="crashkernel=256M")
    with Guest(ensure_image(), work / "guest", "compression", opts) as g:
        g.start()
        g.wait_booted()
        g.install_deb(deb)
        g.write_file("/etc/kdumpd/kdumpd.yaml", CONFIG)
        assert wait_state(g)["State"] == "loaded"
        g.run("sync")  # the crash kernel reads the disk, not our page cache
        offset = g.crash()
        g.wait_console(r"kdumpd: capture complete", 900, offset)
        g.wait_console(r"Command line: (?!.*elfcorehdr=).*crashkernel=.*\n", 600, offset)
        g.wait_booted()
        elf = g.run("ls /var/crash/*/vmcore").stdout.split()[0]
        g.run(f"cat {elf} > /dev/null")
        supported = supported_compressions(g.run("makedumpfile -v").stdout)
        methods = [m for m in COMPRESSION_FLAGS if m in supported]
        size_mib = int(g.run(f"stat -c %s {elf}").stdout) / 2**20
        print(f"\ninput: {elf}, ELF, dump level 31, {size_mib:.1f} MiB")
        print(f"{'method':10}{'seconds':>10}{'MiB':>10}{'MiB/s in':>10}")
        for method in methods:
            seconds = timed(
                g,
                f"rm -f /root/out && makedumpfile {COMPRESSION_FLAGS[method]} -d 31 {elf} "
                "/root/out",
            )
            out_mib = int(g.run("stat -c %s /root/out").stdout) / 2**20
            print(f"{method:10}{seconds:10.1f}{out_mib:10.1f}{size_mib / seconds:10.1f}")
        g.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
