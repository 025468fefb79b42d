"""The systemd units: hardening that still allows kexec, and the capture target's wiring."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

UNITS = Path(__file__).parents[2] / "units"


def test_daemon_unit_is_hardened() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNITS / "kdumpd.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for kdumpd.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


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
