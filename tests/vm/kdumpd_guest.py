"""Helpers for tests of kdumpd inside a guest: the package under test and waiting on D-Bus."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.vm.guest import SYSRQ_CRASH, Guest

ROOT = Path(__file__).parents[2]
BUSCTL = "busctl --system"
OBJ = "org.kdumpd.Kdump1 /org/kdumpd/Kdump1 org.kdumpd.Kdump1"


def build_deb(outdir: Path) -> Path:
    """The Debian package of this tree, built fresh so the guest runs what is checked out."""
    result = subprocess.run(
        [str(ROOT / "packaging/build-deb.sh"), str(outdir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the .deb failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def prop(guest: Guest, name: str, user: str | None = None) -> str:
    """A property as busctl prints it, without the type: 'loaded', 'true', '268435456'."""
    out = guest.run(f"{BUSCTL} get-property {OBJ} {name}", user=user).stdout.strip()
    kind, _, value = out.partition(" ")
    return json.loads(value) if kind == "s" else value


def status(guest: Guest) -> dict[str, Any]:
    result = guest.run("kdumpd status --json", check=False)
    assert result.rc in (0, 3), result
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def wait_state(
    guest: Guest,
    timeout: float = 120.0,
    not_in: tuple[str, ...] = ("loading",),
) -> dict[str, Any]:
    """Wait until the daemon answers on the bus with a State outside `not_in`."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        result = guest.run("kdumpd status --json", check=False)
        if result.rc in (0, 3):
            answer: dict[str, Any] = json.loads(result.stdout)
            if answer["State"] not in not_in:
                return answer
            last = str(answer)
        else:
            last = result.stderr.strip()
        time.sleep(0.5)
    raise TimeoutError(f"daemon state after {timeout} s: {last}")


def wait_armed(guest: Guest, mode: str = "initramfs", timeout: float = 180.0) -> dict[str, Any]:
    """Wait until the crash kernel is loaded in capture mode `mode`. After the package is
    installed the machine's own boot is armed first and kdumpd's capture initramfs a few
    seconds later, once built (a second load that tests counting loads must not see)."""
    deadline = time.monotonic() + timeout
    answer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = wait_state(guest, timeout)
        if answer["State"] == "loaded" and answer["CaptureMode"] == mode:
            return answer
        time.sleep(0.5)
    raise TimeoutError(f"not loaded in capture mode {mode} after {timeout} s: {answer}")


# kdumpd/skew.py's warning, in LastError on every Debian 12 guest: its makedumpfile 1.7.2
# knows kernels up to 6.0.1, and Debian 12 runs 6.1 (tests/vm/test_core.py checks it).
SKEW_WARNING = re.compile(
    r"warning: makedumpfile \S+ supports kernels up to \S+, and kernel \S+ is newer: "
    r".*? and the dump may be wrong or incomplete \([^)]*\)\."
)


def other_errors(status: dict[str, Any]) -> str:
    """LastError without the makedumpfile warning every Debian guest has (12: 1.7.2 and
    Linux 6.1; 13: 1.7.6 and Linux 6.12)."""
    return SKEW_WARNING.sub("", str(status["LastError"])).strip()


def crash_loaded(guest: Guest) -> str:
    return guest.run("cat /sys/kernel/kexec_crash_loaded").stdout.strip()


def journal(guest: Guest, *args: str) -> str:
    return guest.run(["journalctl", "--no-pager", "-o", "cat", *args], check=False).stdout


MSG_LOADED = "e2e8053d528f4011ad724cf17d624f64"
MSG_LOAD_FAILED = "9fa8477d8c3f4cda82f589d89337b068"
QUIET_AFTER_S = 25  # the daemon coalesces for at most 20 s; longer silence means no more


def cursor(g: Guest) -> str:
    out = g.run("journalctl --no-pager -n 0 --show-cursor").stdout
    return out.split("-- cursor: ")[1].strip()


def journal_since(g: Guest, after: str) -> list[dict[str, object]]:
    """Entries after the cursor, filtered by the caller: bookworm's journalctl returns
    nothing when --after-cursor is combined with a field match."""
    out = g.run(["journalctl", "--no-pager", "-o", "json", f"--after-cursor={after}"]).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def entries_since(g: Guest, after: str, message_id: str) -> list[str]:
    """Messages with this MESSAGE_ID after the cursor."""
    return [str(e["MESSAGE"]) for e in journal_since(g, after) if e.get("MESSAGE_ID") == message_id]


def daemon_messages_since(g: Guest, after: str) -> list[str]:
    return [
        str(e["MESSAGE"])
        for e in journal_since(g, after)
        if e.get("_SYSTEMD_UNIT") == "kdumpd.service"
    ]


def internal_errors_since(g: Guest, after: str) -> list[str]:
    """The daemon's "internal error" reports: a bug, not a refused load."""
    return [m for m in daemon_messages_since(g, after) if "internal error" in m]


def loads_since(g: Guest, after: str) -> list[str]:
    """Loads, not adoptions (a restarted daemon taking over what is loaded)."""
    loaded = entries_since(g, after, MSG_LOADED)
    return [m for m in loaded if m.startswith("crash kernel") and not m.endswith("adopted")]


def no_more_loads(g: Guest, after: str, expected: int) -> None:
    """Wait out the coalescing window, then check that exactly `expected` loads happened.

    The follow ends early when one load too many shows up; the count is a plain query."""
    g.run(
        f"timeout {QUIET_AFTER_S} journalctl --no-pager -f -o cat --after-cursor='{after}' "
        f"MESSAGE_ID={MSG_LOADED} | grep --line-buffered '^crash kernel' | head -n {expected + 1}"
        " >/dev/null",
        check=False,
        timeout=QUIET_AFTER_S + 30,
    )
    # On failure, the daemon's own account: each reload says what asked for it.
    assert len(loads_since(g, after)) == expected, daemon_messages_since(g, after)


def reload_reasons_since(g: Guest, after: str) -> list[str]:
    prefix = "reloading the crash kernel: "
    return [m[len(prefix) :] for m in daemon_messages_since(g, after) if m.startswith(prefix)]


def wait_for(g: Guest, predicate_desc: str, check: object, timeout: float = 120.0) -> float:
    """Poll the daemon's status until check(status) is true; returns the seconds it took."""
    assert callable(check)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check(status(g)):
            return time.monotonic() - t0
        time.sleep(0.2)
    raise TimeoutError(f"{predicate_desc}: {status(g)}")


def crash_and_come_back(
    g: Guest, outcome: str, command: Sequence[str] = SYSRQ_CRASH
) -> dict[str, float]:
    """Crash (`command`: see Guest.crash), wait for the capture's outcome on the console
    and for the next boot."""
    timings: dict[str, float] = {}
    # What the test just wrote (fstab, config) may still be only in the page cache: ext4
    # writes delayed data back after 30 s, and the crash kernel reads the disk.
    g.run("sync")
    t0 = time.monotonic()
    offset = g.crash(command)
    g.wait_console(r"Kernel panic - not syncing: sysrq triggered crash", 120, offset)
    g.wait_console(r"Command line: .*elfcorehdr=", 300, offset)
    timings["panic_to_crash_kernel_s"] = time.monotonic() - t0
    done = g.wait_console(rf"kdumpd: {outcome}; reboot", 600, offset)
    timings["panic_to_dump_saved_s"] = time.monotonic() - t0
    # the machine reboots into the normal kernel: its command line has no elfcorehdr=
    g.wait_console(r"Command line: (?!.*elfcorehdr=).*crashkernel=.*\n", 300, offset + done.end())
    g.wait_booted()
    timings["panic_to_multi_user_s"] = time.monotonic() - t0
    print(f"\ncapture timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    return timings


# Debian's MODULES=most copies thousands of modules into each initramfs: a kernel package
# install took 608 s under TCG with it (Debian 12, the stock guest), 137 s with MODULES=dep
# (98-110 s on Debian 13). kdumpd boots an initramfs of its own, so the machine's setting
# only changes how long the install takes; the tests that install kernels set dep for it.
_INSTALL_CONF = "/etc/initramfs-tools/conf.d/kdumpd-tests-install"


def install_kernel_package(g: Guest, deb: Path) -> str:
    """apt-get install a kernel package; returns its release (6.12.118+deb13-amd64)."""
    release = re.sub(r"^linux-image-(.+?)_.*$", r"\1", deb.name)
    g.copy_in(deb, f"/tmp/{deb.name}")
    g.write_file(_INSTALL_CONF, b"MODULES=dep\n")
    t0 = time.monotonic()
    try:
        g.run(
            ["apt-get", "install", "-y", f"/tmp/{deb.name}"],
            timeout=1800,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )
    finally:
        g.run(f"rm -f {_INSTALL_CONF}")
    print(f"\napt-get install {release} took {time.monotonic() - t0:.0f} s")
    return release


def loaded_once_after_install(g: Guest, mark: str, release: str) -> None:
    """The crash kernel follows the install by itself: one load of `release`, with the
    capture initramfs built for it (its modules) before that load."""
    took = wait_for(
        g,
        f"KernelVersion {release}",
        lambda s: s["KernelVersion"] == release and s["State"] == "loaded",
    )
    print(f"new kernel loaded {took:.1f} s after apt-get finished")
    s = status(g)
    assert s["CaptureMode"] == "initramfs" and s["Initrd"].startswith(
        "/var/cache/kdumpd/initramfs-"
    )
    assert crash_loaded(g) == "1"
    no_more_loads(g, mark, expected=1)
    built = [m for m in daemon_messages_since(g, mark) if "capture initramfs built" in m]
    assert len(built) == 1, built
    assert internal_errors_since(g, mark) == []  # dpkg's half-unpacked files are no surprise
    reasons = reload_reasons_since(g, mark)
    print("the reload said why:", reasons)
    assert len(reasons) == 1 and re.search(
        rf"initrd\.img-{re.escape(release)}|Reload from", reasons[0]
    )
