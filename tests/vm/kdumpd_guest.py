"""Helpers for tests of kdumpd inside a guest: the package under test and waiting on D-Bus."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.vm.guest import Guest

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


def crash_loaded(guest: Guest) -> str:
    return guest.run("cat /sys/kernel/kexec_crash_loaded").stdout.strip()


def journal(guest: Guest, *args: str) -> str:
    return guest.run(["journalctl", "--no-pager", "-o", "cat", *args], check=False).stdout
