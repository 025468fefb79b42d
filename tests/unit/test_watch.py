"""Coalescing reload requests (with a fake clock), hotplug uevents, and unforced reloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kdumpd import watch
from tests.bzimage import bzimage, xz
from tests.fakes import INITRD, KERNEL, Machine, V


def test_a_burst_becomes_one_reload_after_the_last_event() -> None:
    c = watch.Coalescer(quiet=2.0, max_wait=20.0)
    assert c.due(0.0) is False  # nothing pending
    # a kernel package: the image, modules, then the initrd, then the hook asks
    for t in (10.0, 10.1, 10.5, 11.9):
        c.event(t)
        assert c.due(t + 1.9) is False
    assert c.event(13.5) == 15.5
    assert c.due(15.4) is False
    assert c.due(15.5) is True  # one reload
    assert c.due(30.0) is False  # and nothing more


def test_a_steady_stream_still_reloads_within_max_wait() -> None:
    c = watch.Coalescer(quiet=2.0, max_wait=5.0)
    fired = []
    t = 0.0
    while t < 12:
        c.event(t)
        t += 1.0
        if c.due(t):
            fired.append(t)
    assert fired == [5.0, 10.0]


def test_a_request_ends_the_wait_sooner() -> None:
    """Hooks run once the package's files are in place: after their request the reload
    need not wait as long as after a file event, which the writer may follow with more."""
    c = watch.Coalescer(quiet=2.0, settled_quiet=0.5)
    c.event(10.0)  # the initrd renamed into place
    assert c.event(10.3, settled=True) == 10.8  # the initramfs hook
    assert c.event(10.6, settled=True) == 11.1  # the kernel hook
    assert c.due(11.0) is False and c.due(11.1) is True
    c.event(20.0, settled=True)
    assert c.event(20.2) == 22.2  # a file written after a request is waited for as ever


def test_separate_bursts_give_separate_reloads() -> None:
    c = watch.Coalescer(quiet=2.0)
    c.event(0.0)
    assert c.due(2.0) is True
    c.event(100.0)
    assert c.due(101.0) is False and c.due(102.0) is True


UEVENT_CPU_ADD = (
    b"add@/devices/system/cpu/cpu2\0ACTION=add\0DEVPATH=/devices/system/cpu/cpu2\0"
    b"SUBSYSTEM=cpu\0SEQNUM=2201\0"
)


def test_parse_uevent() -> None:
    event = watch.parse_uevent(UEVENT_CPU_ADD)
    assert event == {
        "ACTION": "add",
        "DEVPATH": "/devices/system/cpu/cpu2",
        "SUBSYSTEM": "cpu",
        "SEQNUM": "2201",
    }


@pytest.mark.parametrize(
    ("subsystem", "action", "crash_hotplug", "reload"),
    [
        ("cpu", "add", None, True),  # before 6.6 there is no crash_hotplug: reload
        ("cpu", "online", "0", True),
        ("cpu", "offline", "1", False),  # the kernel updates the crash image itself
        ("memory", "online", "0", True),
        ("memory", "remove", "1", False),
        ("cpu", "change", None, False),
        ("block", "add", None, False),
    ],
)
def test_hotplug_decision(
    tmp_path: Path, subsystem: str, action: str, crash_hotplug: str | None, reload: bool
) -> None:
    if crash_hotplug is not None:
        flag = tmp_path / f"sys/devices/system/{subsystem}/crash_hotplug"
        flag.parent.mkdir(parents=True)
        flag.write_text(crash_hotplug + "\n")
    event = {"SUBSYSTEM": subsystem, "ACTION": action}
    assert watch.hotplug_needs_reload(event, tmp_path) is reload


def test_unforced_reload_loads_only_what_changed(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.daemon.reload()
    assert len(m.kexec.calls) == 1
    m.daemon.reload(force=False)  # an event that changed nothing
    assert len(m.kexec.calls) == 1
    (m.root / f"boot/initrd.img-{V}").write_bytes(b"\x28\xb5\x2f\xfd new initrd")
    m.daemon.reload(force=False)
    assert len(m.kexec.calls) == 2 and m.daemon.status.State == "loaded"
    m.daemon.reload()  # forced: loads even though nothing changed
    assert len(m.kexec.calls) == 3


def test_a_request_makes_the_next_reload_load(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.daemon.reload()
    m.daemon.mark_loading()  # Reload, SIGHUP or hotplug, coalesced with file events
    assert m.daemon.status.State == "loading"
    m.daemon.reload(force=False)  # nothing changed on disk, but someone asked
    assert m.daemon.status.State == "loaded" and len(m.kexec.calls) == 2
    m.daemon.reload(force=False)  # that request is served: back to "only what changed"
    assert len(m.kexec.calls) == 2


def _ask_during_the_next_load(
    m: Machine, monkeypatch: pytest.MonkeyPatch, hardware: bool = False
) -> list[int]:
    """Make a request arrive on the D-Bus thread in the middle of the next load syscall;
    returns [how many status changes there were by then], once it has happened."""
    asked_at: list[int] = []
    original = m.kexec._call

    def request_while_loading(*args: Any) -> None:
        if not asked_at:
            asked_at.append(len(m.changes))
            m.daemon.mark_loading(hardware)
        original(*args)

    monkeypatch.setattr(m.kexec, "_call", request_while_loading)
    return asked_at


def test_a_reload_begun_before_a_request_does_not_end_its_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI failure: `kdumpd reload` right after a config edit returned "did not finish"
    when the edit's own reload ended first and the requested one then began."""
    m = Machine(tmp_path)
    m.daemon.reload()
    asked_at = _ask_during_the_next_load(m, monkeypatch)
    m.config.write_text("cmdline_append: [loglevel=7]\n")
    m.daemon.reload(force=False)  # the edit's reload, already past its start
    assert "loglevel=7" in m.daemon.status.CommandLine  # the load itself happened
    assert m.daemon.status.State == "loading"  # but the asker must not hear "loaded" yet
    assert "loaded" not in [c.get("State") for c in m.changes[asked_at[0] :]]
    m.daemon.reload(force=False)  # the coalesced reload for the request
    assert m.daemon.status.State == "loaded"
    # The load under way had read the files as they are now: it answers the request.
    assert len(m.kexec.calls) == 2


def test_a_request_during_a_load_loads_files_changed_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = Machine(tmp_path, system=True)
    m.daemon.reload()
    _ask_during_the_next_load(m, monkeypatch)
    m.daemon.reload()
    (m.root / f"boot/initrd.img-{V}").write_bytes(INITRD + b"rebuilt")  # after it was read
    m.daemon.reload(force=False)
    assert m.daemon.status.State == "loaded" and len(m.kexec.calls) == 3
    assert m.kexec.calls[-1] == f"load {len(KERNEL)} {len(INITRD) + 7}"


def test_a_hotplug_during_a_load_loads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files are the same but the memory map is not: the image must be made again."""
    m = Machine(tmp_path)
    m.daemon.reload()
    _ask_during_the_next_load(m, monkeypatch, hardware=True)
    m.daemon.reload()
    m.daemon.reload(force=False)
    assert m.daemon.status.State == "loaded" and len(m.kexec.calls) == 3


def test_a_failed_load_answers_a_request_made_during_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same files, same error: the request gets that error, not a second try at it."""
    m = Machine(tmp_path)
    m.daemon.reload()
    (m.root / f"boot/vmlinuz-{V}").write_bytes(bzimage(xz(), xloadflags=0))  # ENOEXEC
    _ask_during_the_next_load(m, monkeypatch)
    m.daemon.reload(force=False)
    m.daemon.reload(force=False)
    s = m.daemon.status
    assert len(m.kexec.calls) == 3  # the refused load, the previous kernel again; no more
    assert s.State == "loaded" and "loaded again" in s.LastError


def test_a_kernel_being_unpacked_is_not_installed_yet(tmp_path: Path) -> None:
    """Mid-install: dpkg's vmlinuz-*.dpkg-new, a module directory still at mode 0 (EACCES
    for a daemon without CAP_DAC_OVERRIDE; that once escaped and left State "loading"),
    and an image whose initrd is not written yet."""
    m = Machine(tmp_path)
    m.daemon.reload()
    m.config.write_text("kernel: latest\n")
    (m.root / "boot/vmlinuz-6.1.0-40-amd64.dpkg-new").write_bytes(KERNEL)
    (m.root / "boot/vmlinuz-6.1.0-40-amd64").write_bytes(KERNEL)
    modules = m.root / "lib/modules/6.1.0-40-amd64"
    modules.mkdir(parents=True)
    real_is_file = Path.is_file

    def denied(path: Path) -> bool:
        if path.is_relative_to(modules):
            raise PermissionError(13, "Permission denied", str(path))
        return real_is_file(path)

    m.daemon.mark_loading()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "is_file", denied)
        m.daemon.reload(force=False)
    s = m.daemon.status
    assert (s.State, s.KernelVersion, s.LastError) == ("loaded", V, "")
    (m.root / "boot/initrd.img-6.1.0-40-amd64").write_bytes(INITRD)  # postinst's initramfs
    m.daemon.reload(force=False)
    assert m.daemon.status.KernelVersion == "6.1.0-40-amd64"


def test_config_change_is_a_change(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.daemon.reload()
    m.config.write_text("cmdline_append: [loglevel=7]\n")
    m.daemon.reload(force=False)
    assert len(m.kexec.calls) == 2 and "loglevel=7" in m.daemon.status.CommandLine


def test_garbage_initrd_is_refused_before_the_syscall(tmp_path: Path) -> None:
    m = Machine(tmp_path, system=True)
    m.daemon.reload()
    (m.root / f"boot/initrd.img-{V}").write_bytes(b"\0" * 4096)
    m.daemon.reload(force=False)
    s = m.daemon.status
    assert len(m.kexec.calls) == 1  # the loaded crash kernel was never touched
    assert s.State == "loaded" and s.CrashKernelLoaded and m.kernel_says_loaded()
    assert "is not an initramfs" in s.LastError


def test_watch_targets(tmp_path: Path) -> None:
    m = Machine(tmp_path, versions=(V, "6.1.0-30-amd64"))
    m.daemon.reload()
    targets = m.daemon.watch_targets()
    assert set(targets) == {m.root / "boot", m.config.parent}
    matters = targets[m.root / "boot"]
    assert matters(f"initrd.img-{V}") and matters(f"vmlinuz-{V}")
    assert matters("kdumpd.yaml")
    assert not matters("vmlinuz-6.1.0-30-amd64")  # kernel: running ignores other kernels
    assert not matters("System.map-6.1.0-28-amd64")
    m.config.write_text("kernel: latest\n")
    m.daemon.reload()
    matters = m.daemon.watch_targets()[m.root / "boot"]
    assert matters("vmlinuz-6.1.0-31-amd64") and matters("initrd.img-6.1.0-31-amd64")
