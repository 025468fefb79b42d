"""kdumpd against Debian's kdump-tools, in the same run, on the same guest image.

For each: a fresh stock Debian 12 guest (Debian's default initramfs, 1 GiB, 2 vCPUs, QEMU
TCG, crashkernel=256M) with the service installed from its package; a reboot, then how
long the service took at boot to load the crash kernel (systemd's own timestamps); a sysrq
crash, then the seconds from the panic to each phase on the console (the crash kernel
starts, its /init runs, the dump is saved, the machine's own kernel starts again) and to
multi-user again. Prints one table. No assertions: numbers.

    python -m bench.run [SERVICE ...]     in that order, repeats allowed; none: each once
                                          (make bench: kdumpd kdump-tools kdump-tools kdumpd)
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.vm import debs
from tests.vm.guest import BootOptions, Guest
from tests.vm.image import ImagePaths, ensure_image
from tests.vm.kdumpd_guest import build_deb, crash_loaded, wait_armed


@dataclass
class Service:
    name: str
    unit: str
    install: Callable[[Guest], object]
    saved: str  # console text once the dump is on disk
    daemon: bool = False  # stays running (kdump-tools' unit is a oneshot)


def install_kdump_tools(g: Guest) -> None:
    debs.install(g, "kdump-tools")
    g.run("sed -i 's/^USE_KDUMP=.*/USE_KDUMP=1/' /etc/default/kdump-tools")
    g.run("systemctl enable kdump-tools && systemctl restart kdump-tools", timeout=900)


def boot_load_seconds(g: Guest, unit: str) -> float:
    """From the unit's start to its readiness, in systemd's monotonic clock."""
    out = g.run(
        [
            "systemctl",
            "show",
            unit,
            "-p",
            "ExecMainStartTimestampMonotonic",
            "-p",
            "ActiveEnterTimestampMonotonic",
            "-p",
            "InactiveExitTimestampMonotonic",
        ]
    ).stdout
    values = dict(line.split("=", 1) for line in out.splitlines())
    start = int(values["InactiveExitTimestampMonotonic"])
    return (int(values["ActiveEnterTimestampMonotonic"]) - start) / 1e6


def resident_mib(g: Guest, unit: str) -> float:
    pid = g.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip()
    status = g.read_file(f"/proc/{pid}/status").decode()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return kib / 1024


# After the panic, in this order on the console.
PHASES = (
    ("panic -> crash kernel starts (s)", r"Command line: .*elfcorehdr="),
    ("panic -> its /init runs (s)", r"Run /init as init process"),
)


def crash_timings(g: Guest, saved: str, saved_row: str) -> dict[str, float]:
    """A sysrq crash, and the seconds from the panic to each phase on the console, to the
    dump saved (`saved`, told as `saved_row`) and to multi-user again."""
    results = {}
    t0 = time.monotonic()
    g.run("sync")  # the crash kernel reads the disk, not our page cache
    offset = g.crash()
    for name, marker in PHASES:
        offset += g.wait_console(marker, 600, offset).end()
        results[name] = time.monotonic() - t0
    g.wait_console(saved, 900, offset)
    results[saved_row] = time.monotonic() - t0
    done = g.console_offset()
    g.wait_console(r"Command line: (?!.*elfcorehdr=).*crashkernel=.*\n", 600, done)
    results["panic -> own kernel again (s)"] = time.monotonic() - t0
    g.wait_booted()
    results["panic -> multi-user (s)"] = time.monotonic() - t0
    return results


def _print_boot_chain(g: Guest, service: Service) -> None:
    """What the boot after the crash waited for, so the next bottleneck is visible."""
    for args in (
        ["systemd-analyze", "time"],
        ["systemd-analyze", "critical-chain", "multi-user.target"],
        ["systemd-analyze", "blame"],
        ["journalctl", "-b", "-u", service.unit, "-o", "short-monotonic"],
    ):
        out = g.run([*args, "--no-pager"], check=False).stdout
        print(f"\n{service.name}, boot after the crash: {' '.join(args)}", file=sys.stderr)
        print("\n".join(out.splitlines()[:15]), file=sys.stderr)


def measure(service: Service, workdir: Path) -> dict[str, float]:
    image = ensure_image(stock=True)
    opts = BootOptions(append="crashkernel=256M")
    with Guest(image, workdir / service.name, service.name, opts) as g:
        g.start()
        g.wait_booted()
        service.install(g)
        offset = g.reboot()
        g.wait_console(r"Linux version", 300, offset)
        g.wait_booted()
        if service.name == "kdumpd":
            wait_armed(g)
        results = {"boot: load crash kernel (s)": boot_load_seconds(g, service.unit)}
        if service.daemon:
            results["daemon RSS, armed (MiB)"] = resident_mib(g, service.unit)
        assert crash_loaded(g) == "1", f"{service.name} did not load a crash kernel"
        results |= crash_timings(g, service.saved, "panic -> dump saved (s)")
        _print_boot_chain(g, service)
        g.shutdown()
    return results


def warm(image: ImagePaths) -> None:
    """Read the image into the host's page cache, so that the run that comes first does not
    also pay for the host's disk (kdumpd's guest came first in every run until 2026-12-02,
    and its kernel phases were 0.8-1.3 s slower)."""
    for path in (image.disk, image.kernel, image.initrd):
        with path.open("rb") as f:
            while f.read(1 << 20):
                pass


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main(argv: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="kdumpd-bench-"))
    deb = build_deb(work)
    services = {
        "kdumpd": Service(
            "kdumpd", "kdumpd.service", lambda g: g.install_deb(deb), r"kdumpd: dump saved", True
        ),
        "kdump-tools": Service(
            "kdump-tools", "kdump-tools.service", install_kdump_tools, r"saved vmcore in"
        ),
    }
    # In the order given, repeats allowed: `make bench` runs kdumpd, kdump-tools,
    # kdump-tools, kdumpd, so that neither service always has the first or the last turn.
    order = argv or list(services)
    runs: list[dict[str, float]] = []
    for i, name in enumerate(order):
        warm(ensure_image(stock=True))
        runs.append(measure(services[name], work / str(i)))
    print_table(order, runs)
    return 0


def print_table(order: list[str], runs: list[dict[str, float]]) -> None:
    """One column per run, then each service's mean, and kdumpd's over kdump-tools'."""
    columns = {f"{name} #{i + 1}": r for i, (name, r) in enumerate(zip(order, runs, strict=True))}
    by_service: dict[str, list[dict[str, float]]] = {}
    for name, results in zip(order, runs, strict=True):
        by_service.setdefault(name, []).append(results)
    rows = list(dict.fromkeys(row for results in columns.values() for row in results))
    means = {
        name: {
            row: _mean([r[row] for r in results if row in r])
            for row in rows
            if any(row in r for r in results)
        }
        for name, results in by_service.items()
    }
    headers = [*columns, *(f"{name}, mean" for name in means)]
    both = "kdumpd" in means and "kdump-tools" in means
    print(f"\n{'':32}" + "".join(f"{h:>16}" for h in headers) + ("     ratio" if both else ""))
    for row in rows:
        values = [c.get(row) for c in columns.values()] + [m.get(row) for m in means.values()]
        cells = "".join(f"{v:16.1f}" if v is not None else f"{'-':>16}" for v in values)
        ratio = ""
        if both and row in means["kdumpd"] and row in means["kdump-tools"]:
            ratio = f"{means['kdumpd'][row] / means['kdump-tools'][row]:9.2f}x"
        print(f"{row:32}{cells}{ratio}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
