"""Hotplug uevents, unforced reloads, and requests served through the daemon's queue
(kdumpd/requests.py; its own logic is in test_requests.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kdumpd import watch
from kdumpd.requests import RELOAD, UNLOAD
from tests.bzimage import bzimage, xz
from tests.fakes import INITRD, KERNEL, Machine, V

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
    initrd = m.root / f"boot/initrd.img-{V}"
    os.link(initrd, initrd.with_name(initrd.name + ".dpkg-bak"))  # update-initramfs's backup
    initrd.chmod(0o600)  # a new ctime, the same content
    m.daemon.reload(force=False)
    assert len(m.kexec.calls) == 1
    (m.root / f"boot/initrd.img-{V}").write_bytes(b"\x28\xb5\x2f\xfd new initrd")
    m.daemon.reload(force=False)
    assert len(m.kexec.calls) == 2 and m.daemon.status.State == "loaded"
    m.daemon.reload()  # forced: loads even though nothing changed
    assert len(m.kexec.calls) == 3


def serve_next(m: Machine) -> None:
    """What the worker does with the next request, its quiet time cut short."""
    q = m.daemon.requests
    for waiting in q.waiting():
        waiting.due = 0.0
    request = q.take(timeout=0)
    assert request is not None
    try:
        m.daemon.serve(request)
    finally:
        q.done()


def asked(m: Machine) -> None:
    """A Reload over D-Bus, SIGHUP or a kernel hook."""
    m.daemon.requests.put(RELOAD, "Reload from busctl[1]", asked=True, quiet=0.5)


def test_a_request_makes_the_next_reload_load(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.daemon.reload()
    asked(m)
    assert m.daemon.status.State == "loading"  # derived: something is queued
    serve_next(m)  # nothing changed on disk, but someone asked
    assert m.daemon.status.State == "loaded" and len(m.kexec.calls) == 2
    m.daemon.requests.put(RELOAD, "/boot changed", quiet=2.0)
    serve_next(m)  # a file event: only what changed loads
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
            if hardware:
                m.daemon.requests.put(RELOAD, "cpu2 online", must=True, quiet=2.0)
            else:
                asked(m)
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
    m.daemon.requests.put(RELOAD, f"{m.config} changed", quiet=2.0)
    serve_next(m)  # the edit's reload; the request comes during its load
    assert "loglevel=7" in m.daemon.status.CommandLine  # the load itself happened
    assert m.daemon.status.State == "loading"  # but the asker must not hear "loaded" yet
    assert "loaded" not in [c.get("State") for c in m.changes[asked_at[0] :]]
    serve_next(m)  # the request
    assert m.daemon.status.State == "loaded"
    # The load under way had read the files as they are now: it answers the request.
    assert len(m.kexec.calls) == 2


def test_a_request_during_a_load_loads_files_changed_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = Machine(tmp_path, system=True)
    m.daemon.reload()
    _ask_during_the_next_load(m, monkeypatch)
    asked(m)
    serve_next(m)
    (m.root / f"boot/initrd.img-{V}").write_bytes(INITRD + b"rebuilt")  # after it was read
    serve_next(m)
    assert m.daemon.status.State == "loaded" and len(m.kexec.calls) == 3
    assert m.kexec.calls[-1] == f"load {len(KERNEL)} {len(INITRD) + 7}"


def test_a_hotplug_during_a_load_loads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files are the same but the memory map is not: the image must be made again."""
    m = Machine(tmp_path)
    m.daemon.reload()
    _ask_during_the_next_load(m, monkeypatch, hardware=True)
    asked(m)
    serve_next(m)
    serve_next(m)
    assert m.daemon.status.State == "loaded" and len(m.kexec.calls) == 3


def test_a_failed_load_answers_a_request_made_during_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same files, same error: the request gets that error, not a second try at it."""
    m = Machine(tmp_path)
    m.daemon.reload()
    (m.root / f"boot/vmlinuz-{V}").write_bytes(bzimage(xz(), xloadflags=0))  # ENOEXEC
    _ask_during_the_next_load(m, monkeypatch)
    m.daemon.requests.put(RELOAD, "/boot changed", quiet=2.0)
    serve_next(m)
    serve_next(m)
    s = m.daemon.status
    assert len(m.kexec.calls) == 3  # the refused load, the previous kernel again; no more
    assert s.State == "loaded" and "loaded again" in s.LastError


def test_unload_means_unloaded_until_a_reload_even_across_a_restart(tmp_path: Path) -> None:
    """Issue 11: after `kdumpd unload`, file events and hotplug do not load again; a
    Reload does, and the intent outlives the daemon (in /run/kdumpd) but not the boot."""
    m = Machine(tmp_path)
    m.daemon.reload()
    m.daemon.requests.put(UNLOAD, "Unload from busctl[2]")
    serve_next(m)
    assert m.daemon.status.State == "not-loaded" and not m.kernel_says_loaded()
    m.config.write_text("cmdline_append: [loglevel=7]\n")
    m.daemon.requests.put(RELOAD, f"{m.config} changed", quiet=2.0)
    serve_next(m)
    m.daemon.requests.put(RELOAD, "cpu2 online", must=True, quiet=2.0)
    serve_next(m)
    assert not m.kernel_says_loaded() and m.kexec.calls[-1] == "unload"
    again = Machine.restarted(m)  # the daemon started again, as systemd does
    again.daemon.requests.put(RELOAD, "", must=True)  # its first load (service.start)
    serve_next(again)
    assert again.daemon.status.State == "not-loaded" and not again.kernel_says_loaded()
    asked(again)
    serve_next(again)
    assert again.daemon.status.State == "loaded" and again.kernel_says_loaded()
    assert not (again.root / "run/kdumpd/unloaded").exists()


def test_a_restarted_daemon_adopts_what_it_loaded_instead_of_loading_again(
    tmp_path: Path,
) -> None:
    """Issue 11: every start loaded again, and kexec_file_load frees the loaded image
    first: a gap. The same files, command line, reservation and boot: adopted."""
    m = Machine(tmp_path)
    m.daemon.reload()
    m.daemon.build_environment()  # the capture initramfs, after the machine's own boot
    assert len(m.kexec.calls) == 2
    again = Machine.restarted(m)
    again.daemon.reload()
    s = again.daemon.status
    assert again.kexec.calls == [] and (s.State, s.LastError) == ("loaded", "")
    assert again.daemon.good is not None  # its copies, to restore from later
    # The same bytes in another file (renamed over the old one, as dpkg installs) are
    # loaded again: what was loaded is known by its file's identity, not by its hash.
    kernel = m.root / f"boot/vmlinuz-{V}"
    (kernel.parent / "new").write_bytes(kernel.read_bytes())
    (kernel.parent / "new").rename(kernel)
    third = Machine.restarted(m)
    third.daemon.reload()
    assert len(third.kexec.calls) == 1
    # So is everything in a new boot.
    (m.root / "proc/sys/kernel/random/boot_id").write_text("another boot\n")
    fourth = Machine.restarted(m)
    fourth.daemon.reload()
    assert len(fourth.kexec.calls) == 1


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

    asked(m)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "is_file", denied)
        serve_next(m)
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
    # makedumpfile's directory: a new makedumpfile may end LastError's skew warning.
    assert set(targets) == {m.root / "boot", m.config.parent, m.root / "usr/sbin"}
    matters = targets[m.root / "boot"]
    assert matters(f"initrd.img-{V}") and matters(f"vmlinuz-{V}")
    assert matters("kdumpd.yaml") and matters("makedumpfile")
    assert not matters("vmlinuz-6.1.0-30-amd64")  # kernel: running ignores other kernels
    assert not matters("System.map-6.1.0-28-amd64")
    m.config.write_text("kernel: latest\n")
    m.daemon.reload()
    matters = m.daemon.watch_targets()[m.root / "boot"]
    assert matters("vmlinuz-6.1.0-31-amd64") and matters("initrd.img-6.1.0-31-amd64")


def test_a_new_makedumpfile_is_a_change(tmp_path: Path) -> None:
    """Its version is in LastError (kdumpd/skew.py): an unforced reload reads it again."""
    m = Machine(tmp_path)
    binary = m.root / "usr/sbin/makedumpfile"
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_bytes(b"makedumpfile: version 1.6.0 (released on")
    m.daemon.reload()
    calls = len(m.kexec.calls)
    m.daemon.reload(force=False)
    assert len(m.kexec.calls) == calls  # nothing changed: nothing loaded
    (binary.parent / "new").write_bytes(b"makedumpfile: version 1.7.9 (released on")
    (binary.parent / "new").rename(binary)  # as dpkg installs it
    m.daemon.reload(force=False)
    assert len(m.kexec.calls) == calls + 1
