"""Turning kexec_file_load's errno into a sentence, lockdown included."""

from __future__ import annotations

import errno
from pathlib import Path

from kdumpd.loader import Kexec, KexecError, lockdown_mode


def test_lockdown_mode() -> None:
    assert lockdown_mode("[none] integrity confidentiality\n") == "none"
    assert lockdown_mode("none [integrity] confidentiality\n") == "integrity"
    assert lockdown_mode("none integrity [confidentiality]\n") == "confidentiality"
    assert lockdown_mode("") == "none"


def test_eperm_under_lockdown_names_the_signature(tmp_path: Path) -> None:
    (tmp_path / "sys/kernel/security").mkdir(parents=True)
    kexec = Kexec(tmp_path, machine="x86_64")
    assert kexec.lockdown() == "none"  # no lockdown file: no lockdown LSM
    (tmp_path / "sys/kernel/security/lockdown").write_text("none [integrity] confidentiality\n")
    assert kexec.lockdown() == "integrity"
    e = KexecError(errno.EPERM, "loading the crash kernel", kexec.lockdown())
    assert e.strerror == (
        "loading the crash kernel failed: the kernel is locked down (integrity): it loads "
        "only kernel images signed with a key it trusts (EPERM)"
    )
    plain = str(KexecError(errno.EPERM, "loading the crash kernel").strerror)
    assert "CAP_SYS_BOOT" in plain and "locked down (" not in plain
