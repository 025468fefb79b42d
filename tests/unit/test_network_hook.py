"""conf/hooks/network-up: an interface up asks for the target's check again, once one was
made (ifupdown's if-up.d and NetworkManager's dispatcher.d call it differently)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

HOOK = Path(__file__).parents[2] / "conf/hooks/network-up"


def _hook(tmp_path: Path) -> tuple[Path, Path]:
    """The hook with its run directory moved into tmp_path."""
    run = tmp_path / "run/kdumpd"
    run.mkdir(parents=True)
    copy = tmp_path / "network-up"
    copy.write_text(HOOK.read_text().replace("/run/kdumpd", str(run)))
    copy.chmod(0o755)
    return copy, run


@pytest.mark.parametrize(
    ("args", "env", "asks"),
    [
        ((), {"IFACE": "ens3", "MODE": "start", "PHASE": "post-up"}, True),  # ifupdown
        ((), {"IFACE": "lo"}, False),
        (("ens3", "up"), {}, True),  # NetworkManager
        (("ens3", "down"), {}, False),
        (("ens3", "dhcp4-change"), {}, False),
        (("lo", "up"), {}, False),
    ],
)
def test_an_interface_up_asks_for_a_check(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], asks: bool
) -> None:
    hook, run = _hook(tmp_path)
    (run / "target.json").write_text("{}")
    clean = {"PATH": os.environ["PATH"], **env}
    subprocess.run([str(hook), *args], env=clean, check=True, timeout=30)
    assert (run / "target-check").exists() == asks


def test_without_a_target_checked_before_it_does_nothing(tmp_path: Path) -> None:
    hook, run = _hook(tmp_path)
    subprocess.run([str(hook)], env={"IFACE": "ens3"}, check=True, timeout=30)
    assert not (run / "target-check").exists()
    (run.parent / "kdumpd").rmdir()  # no kdumpd running at all
    subprocess.run([str(hook)], env={"IFACE": "ens3"}, check=True, timeout=30)
