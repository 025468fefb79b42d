"""The systemd units: hardening that still allows kexec, and the capture target's wiring."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

UNITS = Path(__file__).parents[2] / "units"


def _exposure(unit: str) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNITS / unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(rf"Overall exposure level for {unit}: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_daemon_unit_is_hardened() -> None:
    assert _exposure("kdumpd.service") <= 2.0


def test_daemon_unit_keeps_what_kexec_needs() -> None:
    text = (UNITS / "kdumpd.service").read_text()
    assert "CapabilityBoundingSet=CAP_SYS_BOOT\n" in text
    assert "SystemCallFilter=@system-service @reboot\n" in text
    assert "Type=notify\n" in text and "ExecReload=/bin/kill -HUP $MAINPID\n" in text
    assert "ConditionKernelCommandLine=!elfcorehdr\n" in text


def test_capture_target_starts_capture() -> None:
    target = (UNITS / "kdumpd-capture.target").read_text()
    assert "Requires=sysinit.target kdumpd-capture.service" in target
    service = (UNITS / "kdumpd-capture.service").read_text()
    assert "ExecStart=/usr/bin/kdumpd capture" in service
    assert "ConditionPathExists=/proc/vmcore" in service


def _values(text: str, key: str) -> list[str]:
    return [
        v
        for line in text.splitlines()
        if line.startswith(f"{key}=")
        for v in line[len(key) + 1 :].split()
    ]


def test_daemon_unit_arms_early_and_multi_user_waits_for_it() -> None:
    """Started as kdump-tools is, right after the local file systems; without default
    dependencies a target does not wait for the units it wants, so the unit says it."""
    text = (UNITS / "kdumpd.service").read_text()
    assert _values(text, "DefaultDependencies") == ["no"]
    assert "local-fs.target" in _values(text, "After")
    assert not {"basic.target", "sysinit.target", "dbus.socket", "dbus.service"} & set(
        _values(text, "After")
    )
    assert {"multi-user.target", "shutdown.target"} <= set(_values(text, "Before"))
    assert _values(text, "Conflicts") == ["shutdown.target"]
    assert _values(text, "WantedBy") == ["multi-user.target"]
    # PrivateTmp= would order it after systemd-tmpfiles-setup.service, late in sysinit.
    assert not _values(text, "PrivateTmp")
    assert _values(text, "TemporaryFileSystem") == ["/tmp:ro", "/var/tmp:ro"]


def test_the_target_check_runs_where_the_daemon_asks_and_writes_where_it_reads() -> None:
    """The daemon has no network; kdumpd-target-check.path and .service check for it."""
    from kdumpd import service, target

    run = Path("/") / service.RUN_DIR
    path = (UNITS / "kdumpd-target-check.path").read_text()
    assert _values(path, "PathExists") == [str(run / target.CHECK_REQUEST)]
    assert _values(path, "Unit") == ["kdumpd-target-check.service"]
    check = (UNITS / "kdumpd-target-check.service").read_text()
    assert _values(check, "ExecStart") == ["/usr/bin/kdumpd", "target-check"]
    assert _values(check, "ReadWritePaths") == [str(run)]
    assert "network-online.target" in _values(check, "After")
    assert "kdumpd-target-check.path" in _values((UNITS / "kdumpd.service").read_text(), "Wants")
    # The daemon keeps its network sandbox.
    assert "PrivateNetwork=yes\n" in (UNITS / "kdumpd.service").read_text()


def test_the_target_check_unit_is_hardened() -> None:
    """It has the network and mounts: less confined than the daemon, still narrow."""
    assert _exposure("kdumpd-target-check.service") <= 3.0
