"""The daemon's decisions, on a fake machine: load, refuse, and never end up less protected."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kdumpd import journal, kernels, network, requests, reservation, target
from kdumpd.config import Config
from tests.bzimage import bzimage, xz
from tests.fakes import GIB, INITRD, KERNEL, MIB, Machine, V, fake_plan

NOT_64_BIT = bzimage(xz(), xloadflags=0)  # well formed, but bzImage64_probe refuses it


def test_loads_the_running_kernel(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "loaded" and s.CrashKernelLoaded and m.kernel_says_loaded()
    assert s.KernelVersion == V
    assert s.KernelImage == str(m.root / f"boot/vmlinuz-{V}")
    assert s.Initrd == str(m.root / f"boot/initrd.img-{V}")
    assert "crashkernel" not in s.CommandLine and "nr_cpus=1" in s.CommandLine
    assert s.ReservedBytes == 256 * MIB and s.RecommendedBytes > 0
    assert s.LastLoadUsec > 0 and s.LastError == ""
    assert {"State": "loaded"} in [{k: v} for c in m.changes for k, v in c.items()]


def test_the_capture_initramfs_is_built_after_the_first_load_then_loaded(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.daemon.reload()
    s = m.daemon.status
    assert (s.CaptureMode, s.Initrd) == ("system", str(m.root / f"boot/initrd.img-{V}"))
    assert m.daemon.unbuilt is not None and not list(m.cache.glob("*"))
    m.daemon.build_environment()
    s = m.daemon.status
    assert s.State == "loaded" and s.CaptureMode == "initramfs" and s.LastError == ""
    (image,) = m.cache.glob("initramfs-*.img")
    assert s.Initrd == str(image) and image.read_bytes().startswith(b"\xfd7zXZ")
    assert "systemd.unit=" not in s.CommandLine and len(m.kexec.calls) == 2
    # the same content later: found in the cache, not built again
    m.daemon.reload()
    assert m.daemon.unbuilt is None and list(m.cache.glob("*")) == [image]
    assert m.daemon.status.CaptureMode == "initramfs"


def test_an_unreachable_dump_path_arms_the_system_and_says_why(tmp_path: Path) -> None:
    m = Machine(tmp_path, system=True)
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "loaded" and s.CaptureMode == "system"
    assert "capture boots the system's own initramfs and systemd" in s.LastError
    assert "network file system" in s.LastError and "systemd.unit=" in s.CommandLine
    assert m.daemon.unbuilt is None


def test_no_reservation_is_a_state_with_advice(tmp_path: Path) -> None:
    m = Machine(tmp_path, cmdline="root=/dev/vda rw", reserved=0)
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "no-reservation" and not s.CrashKernelLoaded
    assert "crashkernel=" in s.LastError
    assert m.kexec.calls == []


def test_below_minimum_is_refused(tmp_path: Path) -> None:
    m = Machine(tmp_path, cmdline="root=/dev/vda crashkernel=128M", reserved=128 * MIB)
    m.config.write_text("min_reservation: 192M\n")
    m.daemon.reload()
    assert m.daemon.status.State == "failed"
    assert "crashkernel=" in m.daemon.status.LastError
    assert m.kexec.calls == []


def test_broken_config_keeps_the_loaded_kernel(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.daemon.reload()
    first = m.daemon.status
    m.config.write_text("dump_level: 31\nkeep_dumps: lots\n")
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "loaded" and s.CrashKernelLoaded and m.kernel_says_loaded()
    assert "keep_dumps" in s.LastError and f"{m.config}:2" in s.LastError
    assert s.LastLoadUsec == first.LastLoadUsec
    assert m.kexec.calls == [f"load {len(KERNEL)} {len(INITRD)}"]


def test_broken_config_with_nothing_loaded_fails(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.config.write_text("bogus_key: 1\n")
    m.daemon.reload()
    assert m.daemon.status.State == "failed"
    assert "bogus_key: unknown key" in m.daemon.status.LastError


def test_refused_kernel_brings_back_the_last_good_one(tmp_path: Path) -> None:
    m = Machine(tmp_path, system=True)
    m.daemon.reload()
    (m.root / f"boot/vmlinuz-{V}").write_bytes(NOT_64_BIT)
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "loaded" and s.CrashKernelLoaded and m.kernel_says_loaded()
    assert "does not recognise the image format" in s.LastError
    assert "previous crash kernel" in s.LastError
    assert m.kexec.loaded_kernel == KERNEL
    good, refused = f"load {len(KERNEL)} {len(INITRD)}", f"load {len(NOT_64_BIT)} {len(INITRD)}"
    assert m.kexec.calls == [good, refused, good]


@pytest.mark.parametrize(
    ("image", "says"),
    [
        (KERNEL[: len(KERNEL) // 2], "it is truncated: its header says"),
        (KERNEL[:-1], "it is truncated"),
        (KERNEL[:-4096], "it is truncated"),
        (b"garbage", "it is not an x86 bzImage"),
        (KERNEL[:0x300] + bytes([KERNEL[0x300] ^ 1]) + KERNEL[0x301:], "it is damaged: the CRC"),
    ],
)
def test_a_bad_kernel_image_is_refused_and_the_loaded_one_stays(
    tmp_path: Path, image: bytes, says: str
) -> None:
    """kexec_file_load would free the loaded crash kernel and take the bad one: the check
    comes first, and nothing is unloaded."""
    m = Machine(tmp_path)
    m.daemon.reload()
    (m.root / f"boot/vmlinuz-{V}").write_bytes(image)
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "loaded" and s.CrashKernelLoaded and m.kernel_says_loaded()
    assert s.LastError.startswith(f"refusing to load {m.root}/boot/vmlinuz-{V}: {says}")
    assert s.LastError.endswith(f"(the loaded crash kernel {V} stays loaded)")
    assert m.kexec.calls == [f"load {len(KERNEL)} {len(INITRD)}"]
    assert m.kexec.loaded_kernel == KERNEL


def test_a_packaged_kernel_that_was_changed_is_refused(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    info = m.root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    md5 = hashlib.md5(KERNEL).hexdigest()
    (info / f"linux-image-{V}.md5sums").write_text(f"{md5}  boot/vmlinuz-{V}\n")
    m.daemon.reload()
    assert m.daemon.status.State == "loaded"
    changed = bzimage(xz(b"another kernel" * 1000))
    (m.root / f"boot/vmlinuz-{V}").write_bytes(changed)
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "loaded" and m.kexec.loaded_kernel == KERNEL
    assert f"apt-get install --reinstall linux-image-{V}" in s.LastError
    assert len(m.kexec.calls) == 1


def test_a_bad_kernel_image_with_nothing_loaded_fails(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    (m.root / f"boot/vmlinuz-{V}").write_bytes(KERNEL[:-100])
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "failed" and not s.CrashKernelLoaded and m.kexec.calls == []
    assert "it is truncated" in s.LastError and "stays loaded" not in s.LastError


def test_rejected_signature_brings_back_the_last_good_one(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.daemon.reload()
    (m.root / f"boot/vmlinuz-{V}").write_bytes(bzimage(xz(), signed=True))
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "loaded" and s.CrashKernelLoaded and m.kernel_says_loaded()
    assert "the kernel image's signature was rejected (EKEYREJECTED)" in s.LastError
    assert f"the previous crash kernel {V} was loaded again" in s.LastError
    assert m.kexec.loaded_kernel == KERNEL and len(m.kexec.calls) == 3


def test_refused_kernel_with_no_previous_one_fails(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    (m.root / f"boot/vmlinuz-{V}").write_bytes(b"garbage")
    m.daemon.reload()
    assert m.daemon.status.State == "failed" and not m.kernel_says_loaded()


def test_too_small_for_the_images_is_explained(tmp_path: Path) -> None:
    m = Machine(tmp_path, cmdline="root=/dev/vda crashkernel=64K", reserved=64 * 1024)
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "failed"
    assert "do not fit in the crashkernel= reservation" in s.LastError


def test_unsupported_kernel(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    (m.root / "sys/kernel/kexec_crash_loaded").unlink()
    m.daemon.reload()
    assert m.daemon.status.State == "unsupported"
    assert "CONFIG_KEXEC_FILE" in m.daemon.status.LastError


def test_unload_and_refresh_tell_the_truth(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.daemon.reload()
    m.daemon.unload()
    assert m.daemon.status.State == "not-loaded" and not m.kernel_says_loaded()
    m.daemon.reload()
    # Someone unloads behind the daemon's back (kexec -p -u): the next read notices.
    (m.root / "sys/kernel/kexec_crash_loaded").write_text("0\n")
    s = m.daemon.refresh()
    assert s.State == "not-loaded" and not s.CrashKernelLoaded


def test_removed_kernel_falls_back_to_another(tmp_path: Path) -> None:
    m = Machine(tmp_path, versions=(V, "6.1.0-30-amd64"))
    m.config.write_text("kernel: 6.1.0-99-amd64\n")
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "loaded" and s.KernelVersion == V
    assert "no kernel image for 6.1.0-99-amd64" in s.LastError


def test_latest_says_when_the_loaded_kernel_was_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = Machine(tmp_path, versions=(V, "6.1.0-30-amd64"))
    m.config.write_text("kernel: latest\n")
    m.daemon.reload()
    assert m.daemon.status.KernelVersion == "6.1.0-30-amd64"
    capsys.readouterr()
    for name in ("vmlinuz", "initrd.img"):
        (m.root / f"boot/{name}-6.1.0-30-amd64").unlink()
    m.daemon.reload(force=False)
    s = m.daemon.status
    assert (s.State, s.KernelVersion, s.LastError) == ("loaded", V, "")
    err = capsys.readouterr().err
    gone = m.root / "boot/vmlinuz-6.1.0-30-amd64"
    assert f"crash kernel 6.1.0-30-amd64 was removed ({gone} is gone); loading {V}" in err


def test_latest(tmp_path: Path) -> None:
    m = Machine(tmp_path, versions=(V, "6.1.0-30-amd64", "6.1.0-9-amd64"), ram=2 * GIB)
    m.config.write_text("kernel: latest\n")
    m.daemon.reload()
    assert m.daemon.status.KernelVersion == "6.1.0-30-amd64"


@pytest.mark.parametrize(
    ("name", "is_version"),
    [
        ("6.1.0-28-amd64", True),
        ("6.8.0-rc1+", True),
        ("6.1.0-28-amd64.dpkg-new", False),
        ("6.1.0-28-amd64.dpkg-tmp", False),
        ("6.5.6-300.fc39.x86_64;6543a1b2", False),
        ("6.1.0-28-amd64~", False),
    ],
)
def test_files_in_flight_are_not_kernel_versions(name: str, is_version: bool) -> None:
    assert kernels.is_version(name) is is_version


def test_the_first_load_says_when_it_needs_the_cpu_no_more(tmp_path: Path) -> None:
    """`kdumpd serve` imports GLib once the first load is in kexec_file_load, or over."""
    from kdumpd import requests

    m = Machine(tmp_path)
    seen = []
    call = m.kexec._call

    def watched(*args: Any) -> None:
        seen.append(m.daemon.off_cpu.is_set())
        call(*args)

    m.kexec._call = watched  # type: ignore[method-assign,assignment]
    assert not m.daemon.off_cpu.is_set()
    m.daemon.serve(requests.Request(requests.RELOAD, ["first"], True, False, 0.0, 0.0))
    assert seen == [True] and m.daemon.off_cpu.is_set()
    # A first request that never reaches the kernel sets it too.
    m.config.write_text("dump_level: [\n")
    failing = Machine.restarted(m)
    failing.daemon.serve(requests.Request(requests.RELOAD, ["first"], True, False, 0.0, 0.0))
    assert failing.daemon.status.State == "loaded"  # the one loaded before stays
    assert failing.daemon.off_cpu.is_set()


@pytest.mark.parametrize("version, warned", [("1.7.2", True), ("1.7.3", False)])
def test_a_makedumpfile_older_than_the_running_kernel_is_a_warning_in_last_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, warned: bool
) -> None:
    """Issue 13: Debian 12's makedumpfile 1.7.2 knows kernels up to 6.0.1 (kdumpd/skew.py)."""
    import platform

    monkeypatch.setattr(platform, "release", lambda: V)
    m = Machine(tmp_path)
    binary = m.root / "usr/bin/makedumpfile"
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_bytes(b"\x7fELF...makedumpfile: version " + version.encode() + b" (released on")
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "loaded"
    expected = f"warning: makedumpfile 1.7.2 supports kernels up to 6.0.1, and kernel {V} is newer"
    assert (expected in s.LastError) is warned, s.LastError
    if not warned:
        assert s.LastError == ""


def test_a_recalled_capture_initramfs_is_armed_without_planning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """environment.recall (its own tests: test_environment) comes before any plan."""
    from kdumpd import environment

    m = Machine(tmp_path)
    image = m.cache / "initramfs-0123456789abcdef.img"
    image.parent.mkdir(parents=True)
    image.write_bytes(INITRD)
    recalled = environment.Image(image, len(INITRD), 3 * len(INITRD), 0.0, None)
    monkeypatch.setattr(environment, "recall", lambda *args: recalled)

    def no_planning(*args: object) -> environment.Plan:
        raise AssertionError("planned although the plan was recalled")

    # The real planner, as far as the daemon can tell: recall is its record.
    monkeypatch.setattr(environment, "plan", no_planning)
    m.daemon.planner = no_planning
    m.daemon.reload()
    s = m.daemon.status
    assert (s.State, s.CaptureMode, s.Initrd) == ("loaded", "initramfs", str(image))


def test_a_plan_is_remembered_once_its_image_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdumpd import environment

    # Planned and built in a child process (service._apart): what it remembered, in a file.
    remembered = tmp_path / "remembered"

    def remember(p: object, image: environment.Image, cache: Path) -> None:
        with remembered.open("a") as f:
            f.write(f"{image.path}\n")

    monkeypatch.setattr(environment, "remember", remember)
    m = Machine(tmp_path)
    m.daemon.reload()  # nothing loaded yet: the machine's own boot first, no image
    assert not remembered.exists()
    m.daemon.build_environment()
    (image,) = m.cache.glob("initramfs-*.img")
    assert remembered.read_text().splitlines() == [str(image), str(image)]


RSS_PROBE = """
import gc
import sys
gc.disable()  # the cycle below must wait for the daemon's collection
from pathlib import Path
from kdumpd import requests, service
from tests.fakes import Machine

def anon_kib():
    status = Path("/proc/self/status").read_text()
    return int(status.split("RssAnon:")[1].split()[0])

service._tune_malloc()  # as `kdumpd serve` starts
m = Machine(Path(sys.argv[1]))
before = anon_kib()
# As a plan reads files (under the mmap threshold), some of them kept: the freed blocks
# between the kept ones cannot merge into the heap's top to be trimmed.
blocks = [b"x" * 100_000 for _ in range(400)]
kept = blocks[1::2]
del blocks
cycle = [b"y" * 100_000 for _ in range(100)]  # 10 MB (in the holes) only gc frees
cycle.append(cycle)
del cycle
freed = anon_kib()
m.daemon.serve(requests.Request(requests.UNLOAD, ["test"], False, True, 0.0, 0.0))
print(before, freed, anon_kib())
"""


def test_serving_a_request_gives_freed_heap_back(tmp_path: Path) -> None:
    """Cyclic garbage and freed blocks between live ones stay resident until the cycle
    collector and malloc_trim run: each served request runs both (the daemon's idle RSS
    after a plan read every file of the initramfs)."""
    probe = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(tmp_path)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    before, freed, served = map(int, probe.stdout.split())
    assert freed - before > 35_000  # 20 MB kept, 10 MB freed, 10 MB garbage: resident
    assert freed - served > 15_000


def _makedumpfile(m: Machine, version: str) -> None:
    binary = m.root / "usr/bin/makedumpfile"
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_bytes(b"\x7fELF...makedumpfile: version " + version.encode() + b" (released on")


def _machine_with_cpus(
    tmp_path: Path,
    ram: int,
    cpus: str,
    reserved: int,
    makedumpfile: str = "1.7.8",
    apicid: int | None = 2,
) -> Machine:
    """Armed with the (fake) capture initramfs: capture mode system has a 128M floor."""
    m = Machine(tmp_path, ram=ram, reserved=reserved)
    _makedumpfile(m, makedumpfile)
    (m.root / "sys/devices/system/cpu").mkdir(parents=True)
    (m.root / "sys/devices/system/cpu/online").write_text(f"{cpus}\n")
    if apicid is not None:
        (m.root / "proc/cpuinfo").write_text(f"processor\t: 0\ninitial apicid\t: {apicid}\n\n")
    m.daemon.reload()
    m.daemon.build_environment()
    assert m.daemon.status.CaptureMode == "initramfs"
    return m


def _recommended(m: Machine, cpus: int) -> int:
    ram = 8 * GIB - MIB  # make_sysroot's System RAM
    image = Path(m.daemon.status.Initrd)
    unpacked = len(fake_plan(Config(), V, m.root).archive)
    return reservation.recommended_bytes(
        ram, len(KERNEL), image.stat().st_size, unpacked, "initramfs", cpus
    )


def test_a_big_machine_captures_with_the_cpus_its_recommendation_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notices: list[str] = []
    monkeypatch.setattr(journal, "send", lambda priority, message, *a, **k: notices.append(message))
    big = _machine_with_cpus(tmp_path / "big", 8 * GIB, "0-15", 512 * MIB)
    s = big.daemon.status
    assert s.State == "loaded" and "nr_cpus=4" in s.CommandLine.split()
    assert "disable_cpu_apicid=2" in s.CommandLine.split()
    assert s.RecommendedBytes == _recommended(big, 4) > _recommended(big, 1)
    assert "4 CPUs) into a 512M reservation" in notices[-1]
    # a reservation that holds one CPU's need but not four's: fewer CPUs, no warning
    tight = _machine_with_cpus(tmp_path / "tight", 8 * GIB, "0-15", _recommended(big, 1))
    t = tight.daemon.status
    assert t.State == "loaded" and t.LastError == "" and t.RecommendedBytes == s.RecommendedBytes
    cpus = next(p for p in t.CommandLine.split() if p.startswith("nr_cpus="))
    assert cpus in ("nr_cpus=1", "nr_cpus=2", "nr_cpus=3")
    assert any(f"capture gets {cpus[8:]} of the 4 CPUs" in n for n in notices)
    # a small machine: one CPU, whatever it has
    small = _machine_with_cpus(tmp_path / "small", 1 * GIB, "0-15", 512 * MIB)
    assert "nr_cpus=1" in small.daemon.status.CommandLine.split()
    # a makedumpfile whose threads corrupt dumps (Debian 12's): the CPUs, no threads (the
    # crash kernel leaves them out, test_capture), and a notice that says so
    notices.clear()
    old = _machine_with_cpus(tmp_path / "old", 8 * GIB, "0-15", 512 * MIB, makedumpfile="1.7.2")
    o = old.daemon.status
    assert "nr_cpus=4" in o.CommandLine.split() and o.RecommendedBytes == _recommended(old, 4)
    expected = "capture gets 4 CPUs, makedumpfile no threads: makedumpfile 1.7.2; before 1.7.8"
    assert any(expected in n for n in notices)
    # x86 without the boot CPU's APIC ID in /proc/cpuinfo: one CPU
    blind = _machine_with_cpus(tmp_path / "blind", 8 * GIB, "0-15", 512 * MIB, apicid=None)
    b = blind.daemon.status.CommandLine.split()
    assert "nr_cpus=1" in b and not any(p.startswith("disable_cpu_apicid") for p in b)
    # an admin's nr_cpus= in cmdline_append: loaded as written, and counted
    admin = Machine(tmp_path / "admin", ram=1 * GIB, reserved=512 * MIB)
    admin.config.write_text("cmdline_append: [nr_cpus=3]\n")
    admin.daemon.reload()
    admin.daemon.build_environment()
    a = admin.daemon.status
    assert "nr_cpus=3" in a.CommandLine.split()
    ram = 1 * GIB - MIB
    image = Path(a.Initrd)
    unpacked = len(fake_plan(Config(), V, admin.root).archive)
    assert a.RecommendedBytes == reservation.recommended_bytes(
        ram, len(KERNEL), image.stat().st_size, unpacked, "initramfs", 3
    )


def test_an_nfs_target_arms_sending_with_the_way_its_check_found(tmp_path: Path) -> None:
    """No key, no ssh: the verdict's way alone arms it, with the NFS client's modules."""
    m = Machine(tmp_path)
    url = "nfs://192.0.2.1/export/dumps"
    m.config.write_text(f"target: {url}\n")
    m.daemon.reload()
    m.daemon.serve(requests.Request(requests.BUILD, ["built"], False, False, 0, 0))
    s = m.daemon.status
    assert s.State == "loaded" and s.CrashKernelLoaded
    assert (
        f"warning: target {url}: a crash dump is saved to /var/crash instead: the way to "
        "192.0.2.1 is known once kdumpd-target-check.service checked it"
    ) in s.LastError
    loads = len(m.kexec.calls)
    verdict = target.Verdict(url, "", True, "reachable", target.now_usec(), ROUTE)
    target.record(verdict, m.daemon.run_dir / target.VERDICT)
    m.daemon.serve(requests.Request(requests.TARGET, ["verdict"], False, False, 0, 0))
    assert len(m.kexec.calls) == loads + 1
    assert f"target {url}: a crash dump is sent there over ens3" in m.daemon.status.LastError
    assert m.daemon.good is not None and m.daemon.good.route == ROUTE


ROUTE = network.Route("192.0.2.1", "ens3", "52:54:00:c0:00:02", "192.0.2.2", "", 1500,
                      ("virtio_net", "virtio_pci"))  # fmt: skip


def _ssh_target(m: Machine, tmp_path: Path) -> tuple[str, Path]:
    """An ssh target in the config, its key, and ssh installed."""
    (m.root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (m.root / "usr/bin/ssh").write_bytes(b"")
    key = tmp_path / "key"
    key.write_text("a key\n")
    key.chmod(0o600)
    url = "ssh://kdump@192.0.2.1/var/crash"
    m.config.write_text(f"target: {url}\nssh_key: {key}\n")
    return url, key


def test_the_way_the_check_found_arms_sending_and_a_new_way_loads_again(tmp_path: Path) -> None:
    """The route comes with the verdict (the daemon has no network): the capture initramfs
    that sends the dump is loaded then, once per way, not at every check."""
    m = Machine(tmp_path)
    url, key = _ssh_target(m, tmp_path)
    m.daemon.reload()
    m.daemon.serve(requests.Request(requests.BUILD, ["built"], False, False, 0, 0))
    s = m.daemon.status
    assert (s.State, s.CaptureMode) == ("loaded", "initramfs")
    assert (
        f"target {url}: a crash dump is saved to /var/crash instead: the way to 192.0.2.1 is "
        "known once kdumpd-target-check.service checked it"
    ) in s.LastError
    loads = len(m.kexec.calls)

    def checked(route: network.Route | None, no_route: str = "") -> None:
        verdict = target.Verdict(url, str(key), True, "reachable", target.now_usec(), route,
                                 no_route)  # fmt: skip
        target.record(verdict, m.daemon.run_dir / target.VERDICT)
        m.daemon.serve(requests.Request(requests.TARGET, ["verdict"], False, False, 0, 0))

    request = m.daemon.run_dir / target.CHECK_REQUEST
    request.unlink()  # as the check does first
    checked(ROUTE)
    s = m.daemon.status
    assert len(m.kexec.calls) == loads + 1, m.kexec.calls
    assert not request.exists()  # the verdict that loaded it is new: no other check asked for
    assert m.daemon.good is not None and m.daemon.good.route == ROUTE
    assert f"target {url}: a crash dump is sent there over ens3 (192.0.2.2)" in s.LastError
    assert "warning" not in s.LastError
    checked(ROUTE)  # checked again, the same way: nothing to load
    assert len(m.kexec.calls) == loads + 1
    via = dataclasses.replace(ROUTE, gateway="192.0.2.254")
    checked(via)
    assert len(m.kexec.calls) == loads + 2
    assert "over ens3 (192.0.2.2 via 192.0.2.254)" in m.daemon.status.LastError
    checked(None, "no route to 192.0.2.1")  # the network went away: saved here, said why
    assert len(m.kexec.calls) == loads + 3 and m.daemon.good.route is None
    assert (
        "a crash dump is saved to /var/crash instead: no way to 192.0.2.1 was found: no route"
    ) in m.daemon.status.LastError


def test_the_system_s_own_boot_never_sends_and_is_not_loaded_again_for_a_way(
    tmp_path: Path,
) -> None:
    m = Machine(tmp_path, system=True)
    url, key = _ssh_target(m, tmp_path)
    m.daemon.reload()
    loads = len(m.kexec.calls)
    verdict = target.Verdict(url, str(key), True, "reachable", target.now_usec(), ROUTE)
    target.record(verdict, m.daemon.run_dir / target.VERDICT)
    m.daemon.serve(requests.Request(requests.TARGET, ["verdict"], False, False, 0, 0))
    assert len(m.kexec.calls) == loads
    assert (
        "saved to /var/crash instead: capture boots the system's own" in m.daemon.status.LastError
    )


def test_a_missing_ssh_key_is_a_warning_not_a_lost_crash_kernel(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.config.write_text(f"target: ssh://kdump@192.0.2.1/var/crash\nssh_key: {tmp_path}/key\n")
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "loaded" and s.CrashKernelLoaded
    assert f"warning: {m.config}:2: ssh_key: {tmp_path}/key: No such file" in s.LastError


def test_the_target_is_checked_for_the_daemon_and_the_verdict_told(tmp_path: Path) -> None:
    """The daemon has no network: at arming it asks (kdumpd-target-check.path starts the
    check when the request file appears); the verdict, written later, goes into LastError
    without a reload, and only for the target and key it was made with."""
    m = Machine(tmp_path)
    key = tmp_path / "key"
    key.write_text("a key\n")
    key.chmod(0o600)
    url = "ssh://kdump@192.0.2.1/var/crash"
    m.config.write_text(f"target: {url}\nssh_key: {key}\n")
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "loaded" and f"target {url}: not checked yet" in s.LastError
    request = m.daemon.run_dir / target.CHECK_REQUEST
    assert request.exists()
    loaded = s.LastLoadUsec

    request.unlink()  # as the check does first
    assert not m.daemon.verdict_unread()
    refused = target.Verdict(url, str(key), False, "192.0.2.1: permission denied", 7)
    target.record(refused, m.daemon.run_dir / target.VERDICT)
    assert m.daemon.verdict_unread()  # the D-Bus layer then queues a TARGET request
    m.daemon.serve(requests.Request(requests.TARGET, ["verdict"], False, False, 0, 0))
    s = m.daemon.status
    assert not m.daemon.verdict_unread()
    # Begun before the daemon asked: the last check, not the answer to this arming.
    said = f"warning: target {url}: 192.0.2.1: permission denied (that was the last check;"
    assert said in s.LastError
    target.record(
        dataclasses.replace(refused, time_usec=target.now_usec()), request.parent / target.VERDICT
    )
    m.daemon.serve(requests.Request(requests.TARGET, ["verdict"], False, False, 0, 0))
    s = m.daemon.status
    assert f"warning: target {url}: 192.0.2.1: permission denied warning:" in s.LastError
    assert "not checked yet" not in s.LastError and "saved to /var/crash instead" in s.LastError
    assert s.State == "loaded" and s.LastLoadUsec == loaded and not request.exists()

    # Another key named: that verdict is not about it.
    other = tmp_path / "other"
    other.write_text("another key\n")
    other.chmod(0o600)
    m.config.write_text(f"target: {url}\nssh_key: {other}\n")
    m.daemon.reload()
    assert "not checked yet" in m.daemon.status.LastError and request.exists()

    # No target: no words about one, no check asked for.
    request.unlink()
    m.config.write_text("")
    m.daemon.reload()
    assert m.daemon.status.LastError == "" and not request.exists()


def test_the_verdict_file_is_watched_only_while_there_is_a_target(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.daemon.reload()
    assert m.daemon.run_dir not in m.daemon.watch_targets()
    m.config.write_text("target: nfs://192.0.2.1/srv/dumps\n")
    m.daemon.reload()
    matters = m.daemon.watch_targets()[m.daemon.run_dir]
    assert matters(target.VERDICT) == requests.TARGET
    assert matters(target.CHECK_REQUEST) is None and matters("loaded.json") is None
    config_dir = m.daemon.watch_targets()[m.config.parent]
    assert config_dir(m.config.name) == requests.RELOAD and config_dir("other") is None


KEPT: list[bytes] = []  # what a planner keeps: in the daemon's process, it would stay there


def test_the_plan_and_its_build_are_made_in_a_process_of_their_own(tmp_path: Path) -> None:
    """What a plan allocates leaves with its process (service._apart): the daemon's memory
    is not the plan's."""
    pids = tmp_path / "planned-in"

    def keeping_plan(cfg: Config, version: str, sysroot: Path) -> Any:
        KEPT.extend(b"%d" % i * 100 for i in range(10_000))
        with pids.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return fake_plan(cfg, version, sysroot)

    m = Machine(tmp_path)
    m.daemon.planner = keeping_plan
    m.daemon.reload()  # the machine's own boot, then the build, each planned apart
    m.daemon.build_environment()
    s = m.daemon.status
    assert (s.State, s.CaptureMode) == ("loaded", "initramfs")
    planned_in = pids.read_text().split()
    assert len(planned_in) == 3 and str(os.getpid()) not in planned_in, planned_in
    assert KEPT == []


@pytest.mark.parametrize(
    ("end", "said"),
    [
        (lambda: os.kill(os.getpid(), signal.SIGKILL), "without an answer (killed by SIGKILL)"),
        (lambda: os._exit(3), "without an answer (exit status 3)"),
        (lambda: int("x"), 'planning failed: ValueError("invalid literal'),
    ],
)
def test_a_planner_that_dies_or_breaks_fails_the_load_not_the_daemon(
    tmp_path: Path, end: Any, said: str
) -> None:
    m = Machine(tmp_path)
    m.daemon.reload()
    m.daemon.build_environment()
    loaded = m.daemon.status
    assert (loaded.State, loaded.CaptureMode) == ("loaded", "initramfs")

    def dying_plan(cfg: Config, version: str, sysroot: Path) -> Any:
        end()

    m.daemon.planner = dying_plan
    for image in m.cache.glob("initramfs-*.img"):
        image.unlink()
    m.daemon.reload()
    s = m.daemon.status
    assert s.State == "loaded" and said in s.LastError, s.LastError
    assert s.Initrd == loaded.Initrd and m.kernel_says_loaded()  # the last good one kept
