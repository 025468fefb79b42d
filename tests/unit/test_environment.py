"""The capture initramfs: ELF dependencies, the cpio archive, module order, and where the
dump file system is, from fake sysfs, udev and mountinfo trees (the real machine: the VM
tests in tests/vm/test_capture_initramfs.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from kdumpd import config, cpio, elf, environment, init, network, target

PYTHON = os.path.realpath("/usr/bin/python3")
ROOT_UUID = "c35783c3-a793-4b3a-84c0-eb82205194aa"


def test_elf_names_the_loader_and_the_libraries() -> None:
    info = elf.dynamic(Path(PYTHON).read_bytes())
    assert info is not None
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert {"libc.so.6", "libm.so.6", "libz.so.1"} <= set(info.needed)
    assert elf.dynamic(b"#!/bin/sh\n") is None
    with pytest.raises(elf.ElfError):
        elf.dynamic(b"\x7fELF\x02\x01")


def test_library_dirs_follow_ld_so_conf_includes(tmp_path: Path) -> None:
    (tmp_path / "etc/ld.so.conf.d").mkdir(parents=True)
    (tmp_path / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (tmp_path / "etc/ld.so.conf.d/x86_64-linux-gnu.conf").write_text(
        "# Multiarch support\n/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n"
    )
    assert elf.library_dirs(tmp_path)[:2] == (
        "/usr/local/lib/x86_64-linux-gnu",
        "/lib/x86_64-linux-gnu",
    )
    assert elf.library_dirs(tmp_path)[-1] == "/usr/lib"


def _unpack(data: bytes, into: Path) -> None:
    into.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=into, check=True)


def test_the_archive_unpacks_with_directories_first_and_is_deterministic(tmp_path: Path) -> None:
    entries = {
        "usr/bin/tool": cpio.regular(b"#!/bin/sh\necho hi\n", 0o755),
        "usr": cpio.directory(),
        "usr/bin": cpio.directory(),
        "bin": cpio.symlink("usr/bin"),
        "dev": cpio.directory(),
    }
    data = cpio.archive(entries)
    assert data == cpio.archive(dict(reversed(entries.items())))
    assert data.startswith(b"070701") and len(data) % 4 == 0
    _unpack(data, tmp_path / "x")
    assert (tmp_path / "x/bin/tool").read_text() == "#!/bin/sh\necho hi\n"
    assert os.readlink(tmp_path / "x/bin") == "usr/bin"
    assert (tmp_path / "x/usr/bin/tool").stat().st_mode & 0o777 == 0o755


def _modules_dir(root: Path) -> Path:
    d = root / "lib/modules/6.1.0-50-amd64"
    d.mkdir(parents=True)
    (d / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n"
        "kernel/lib/crc16.ko:\nkernel/fs/mbcache.ko:\nkernel/fs/jbd2/jbd2.ko:\n"
        "kernel/crypto/crc32c_generic.ko:\n"
        "kernel/drivers/md/dm-mod.ko:\n"
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko "
        "kernel/drivers/virtio/virtio.ko\n"
        "kernel/drivers/virtio/virtio_ring.ko:\nkernel/drivers/virtio/virtio.ko:\n"
    )
    (d / "modules.softdep").write_text("# comment\nsoftdep ext4 pre: crypto-crc32c\n")
    (d / "modules.alias").write_text(
        "alias crypto-crc32c crc32c_generic\nalias fs-ext3 ext4\nalias pci:v*d* virtio_pci\n"
    )
    (d / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    return d


def test_modules_load_dependencies_and_soft_dependencies_first(tmp_path: Path) -> None:
    index = environment.ModuleIndex.read(_modules_dir(tmp_path), environment.Sources())
    order = index.load_order({"ext4", "virtio_blk", "virtio_pci", "dm-mod"})
    names = [environment.module_name(p) for p in order]
    assert names.index("crc32c_generic") < names.index("ext4")
    for dep in ("crc16", "mbcache", "jbd2"):
        assert names.index(dep) < names.index("ext4")
    assert names.index("virtio") < names.index("virtio_blk")
    assert "virtio_pci" not in names  # built in
    assert "kernel/drivers/md/dm-mod.ko" in order
    assert len(order) == len(set(order))
    assert index.resolve("fs-ext3") == ["ext4"]
    with pytest.raises(environment.Unreachable, match="has no module nvme"):
        index.load_order({"nvme"})


def _link(at: Path, target: Path) -> None:
    at.parent.mkdir(parents=True, exist_ok=True)
    at.symlink_to(os.path.relpath(target, at.parent))


def _driver(sysroot: Path, device: Path, module: str) -> None:
    drv = sysroot / f"sys/bus/x/drivers/{module}"
    drv.mkdir(parents=True, exist_ok=True)
    _link(drv / "module", sysroot / f"sys/module/{module}")
    (sysroot / f"sys/module/{module}").mkdir(parents=True, exist_ok=True)
    _link(device / "driver", drv)


def _block(sysroot: Path, device: Path, name: str, dev: str, udev: str = "") -> Path:
    device.mkdir(parents=True, exist_ok=True)
    (device / "dev").write_text(dev + "\n")
    _link(sysroot / f"sys/class/block/{name}", device)
    _link(sysroot / f"sys/dev/block/{dev}", device)
    if udev:
        data = sysroot / f"run/udev/data/b{dev}"
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_text(udev)
    return device


def machine(tmp_path: Path, mountinfo: str, fstab: str = "") -> Path:
    """A virtio disk vda with a partition vda1 (the root file system)."""
    root = tmp_path / "root"
    pci = root / "sys/devices/pci0000:00/0000:00:04.0"
    virtio = pci / "virtio1"
    disk = _block(root, virtio / "block/vda", "vda", "254:0")
    part = _block(root, disk / "vda1", "vda1", "254:1", f"E:ID_FS_UUID={ROOT_UUID}\n")
    (part / "partition").write_text("1\n")
    _driver(root, virtio, "virtio_blk")
    _driver(root, pci, "virtio_pci")
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    (root / "etc").mkdir()
    (root / "etc/fstab").write_text(fstab)
    return root


ROOT_MOUNT = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"


def test_the_root_file_system_on_a_partition(tmp_path: Path) -> None:
    root = machine(tmp_path, ROOT_MOUNT)
    t = environment.find_target(root, Path("/var/crash"))
    assert (t.uuid, t.fstype, t.options, t.subdir) == (ROOT_UUID, "ext4", "", "var/crash")
    assert t.modules == {"virtio_blk", "virtio_pci", "ext4"}
    assert t.devices == ("vda1",) and t.volume_groups == ()


def test_a_btrfs_subvolume_is_reached_from_the_top_level(tmp_path: Path) -> None:
    root = machine(tmp_path, "22 1 0:31 /@ / rw - btrfs /dev/vda1 rw,subvol=/@\n")
    t = environment.find_target(root, Path("/var/crash"))
    assert (t.fstype, t.options, t.subdir) == ("btrfs", "subvolid=5", "@/var/crash")


def test_a_separate_dump_file_system_and_a_symlinked_dump_path(tmp_path: Path) -> None:
    root = machine(tmp_path, ROOT_MOUNT + "30 22 254:1 / /srv/dumps rw - xfs /dev/vda1 rw\n")
    (root / "srv/dumps/crash").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var/crash").symlink_to("/srv/dumps/crash")
    t = environment.find_target(root, Path("/var/crash"))
    assert (t.fstype, t.subdir) == ("xfs", "crash")


def lvm_machine(tmp_path: Path) -> Path:
    """machine(), with /var/crash on the LV crashvg/dumps (dm-0) on vda1."""
    mount = "22 1 253:0 / /var/crash rw - ext4 /dev/mapper/crashvg-dumps rw\n"
    root = machine(tmp_path, ROOT_MOUNT + mount)
    dm = _block(
        root,
        root / "sys/devices/virtual/block/dm-0",
        "dm-0",
        "253:0",
        "E:ID_FS_UUID=1111-2222\nE:DM_VG_NAME=crashvg\nE:DM_LV_NAME=dumps\n",
    )
    (dm / "dm").mkdir()
    (dm / "dm/uuid").write_text("LVM-abcdef\n")
    (dm / "dm/name").write_text("crashvg-dumps\n")
    _link(dm / "slaves/vda1", root / "sys/class/block/vda1")
    (root / "sys/module/dm_mod").mkdir(parents=True)
    return root


def test_lvm_is_followed_to_its_disks(tmp_path: Path) -> None:
    root = lvm_machine(tmp_path)
    (root / "sys/module/dm_thin_pool").mkdir()
    t = environment.find_target(root, Path("/var/crash"))
    assert (t.uuid, t.subdir, t.volume_groups) == ("1111-2222", "", ("crashvg",))
    assert t.modules == {"dm_mod", "dm_thin_pool", "virtio_blk", "virtio_pci", "ext4"}
    assert t.devices == ("dm-0", "vda1")


@pytest.mark.parametrize(
    ("name", "dm_uuid", "reason"),
    [
        ("loop0", "", "loop0 is a loop device"),
        ("md0", "", "md0 is software RAID"),
        ("dm-1", "CRYPT-LUKS2-abc", r"is encrypted \(dm-crypt/LUKS\)"),
        ("dm-1", "mpath-3600", "is multipath"),
    ],
)
def test_devices_it_cannot_reach_say_why(
    tmp_path: Path, name: str, dm_uuid: str, reason: str
) -> None:
    mount = f"22 1 7:0 / /var/crash rw - ext4 /dev/{name} rw\n"
    root = machine(tmp_path, ROOT_MOUNT + mount)
    dev = _block(root, root / f"sys/devices/virtual/block/{name}", name, "7:0", "E:ID_FS_UUID=x\n")
    if dm_uuid:
        (dev / "dm").mkdir()
        (dev / "dm/uuid").write_text(dm_uuid)
        (dev / "dm/name").write_text("thing")
    with pytest.raises(environment.Unreachable, match=reason) as e:
        environment.find_target(root, Path("/var/crash"))
    assert f"/var/crash is on /dev/{name} (ext4, mounted on /var/crash)" in str(e.value)


def test_network_file_systems_and_unmounted_fstab_entries(tmp_path: Path) -> None:
    nfs = "40 22 0:50 / /var/crash rw - nfs4 server:/dumps rw\n"
    with pytest.raises(environment.Unreachable, match="a network file system"):
        environment.find_target(machine(tmp_path / "a", ROOT_MOUNT + nfs), Path("/var/crash"))
    fstab = "/dev/vdb /var/crash ext4 noauto 0 2\n"
    with pytest.raises(environment.Unreachable, match=r"/var/crash \(in /etc/fstab"):
        environment.find_target(machine(tmp_path / "b", ROOT_MOUNT, fstab), Path("/var/crash"))


def _installed(root: Path, path: str, data: bytes = b"#!/bin/sh\n") -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_bytes(data)
    (root / path).chmod(0o755)


def _plan(
    root: Path, cfg: config.Config, more_modules: str = ""
) -> tuple[dict[str, object], str, Path]:
    """plan() on a fake machine: the archive's settings, its /init, and where it unpacked."""
    modules = _modules_dir(root)
    with (modules / "modules.dep").open("a") as dep:
        dep.write(more_modules)
    for line in (modules / "modules.dep").read_text().splitlines():
        _installed(modules.parent.parent.parent, f"lib/modules/{modules.name}/{line.split(':')[0]}")
    for program in ("usr/bin/busybox", "usr/bin/makedumpfile", "usr/sbin/blkid", "usr/bin/py"):
        _installed(root, program)
    p = environment.plan(cfg, modules.name, root, python="/usr/bin/py")
    _unpack(p.archive, root.parent / "archive")
    unpacked = root.parent / "archive"
    settings = json.loads((unpacked / environment.SETTINGS).read_text())
    return settings, (unpacked / "init").read_text(), unpacked


def test_stage_one_mounts_the_root_and_runs_stage_two_from_it(tmp_path: Path) -> None:
    root = machine(tmp_path, ROOT_MOUNT)
    settings, script, unpacked = _plan(root, config.Config(failure_action="poweroff"))
    check = subprocess.run(["busybox", "sh", "-n", str(unpacked / "init")], capture_output=True)
    assert check.returncode == 0, check.stderr
    assert script.startswith("#!/usr/bin/busybox sh\n")
    # The root's drivers, dependencies first, in the archive; no Python, no makedumpfile.
    loads = re.search(r"for m in (.*); do", script)
    assert loads is not None
    names = [environment.module_name(m) for m in loads.group(1).split()]
    assert names.index("virtio") < names.index("virtio_blk")
    assert names.index("crc32c_generic") < names.index("ext4")
    for m in loads.group(1).split():
        assert (unpacked / m.lstrip("/")).is_file(), m
    assert not (unpacked / "usr/bin/py").exists()
    assert not (unpacked / "usr/bin/makedumpfile").exists()
    assert f"findfs UUID={ROOT_UUID}" in script
    assert 'mount -t ext4  "$dev" /root' in script
    assert "switch_root /root /usr/bin/py -I -c" in script
    assert "poweroff -f" in script  # the failure action, when stage one fails
    assert settings["target"] is None  # the dump path is on the root file system
    assert settings["dump_path"] == "/var/crash" and settings["modules"] == []


def test_a_dump_file_system_of_its_own_is_mounted_by_stage_two(tmp_path: Path) -> None:
    root = lvm_machine(tmp_path)
    _installed(root, "usr/sbin/lvm")
    settings, script, unpacked = _plan(root, config.Config())
    assert "vgchange" not in script and not (unpacked / "usr/sbin/lvm").exists()  # root: no LVM
    assert settings["target"] == {
        "uuid": "1111-2222",
        "fstype": "ext4",
        "options": "",
        "subdir": "",
        "volume_groups": ["crashvg"],
    }
    assert settings["programs"]["lvm"] == "/usr/sbin/lvm"  # type: ignore[index]
    assert "/lib/modules/6.1.0-50-amd64/kernel/drivers/md/dm-mod.ko" in settings["modules"]  # type: ignore[operator]


def test_capture_settings_survive_the_trip(tmp_path: Path) -> None:
    """What plan() writes into the archive, init.capture_config reads back."""
    from kdumpd import init

    cfg = config.Config(makedumpfile_args=("--num-threads", "2"), keep_dumps=2, compression="zlib")
    capture = {k: environment._jsonable(getattr(cfg, k)) for k in environment.CAPTURE_KEYS}
    on_root = init.capture_config({"target": None, "dump_path": "/srv/crash", "capture": capture})
    assert on_root.dump_path == Path("/srv/crash")
    back = init.capture_config({"target": {"subdir": "var/crash"}, "capture": capture})
    assert back.dump_path == init.TARGET / "var/crash"
    for key in environment.CAPTURE_KEYS:
        assert getattr(back, key) == getattr(cfg, key), key


FAKE_BUSYBOX = """#!/bin/sh
# Records each applet call; findfs finds the root only when $FOUND is set.
echo "$*" >> "$LOG"
case "$1" in
findfs) [ -n "$FOUND" ] && echo /dev/vda1 ;;
insmod) [ "${2##*/}" != "$BROKEN" ] ;;
cut) echo 1.25 ;;
reboot|poweroff|halt) kill -TERM $PPID ;;  # they do not return
esac
"""


def _run_stage_one(tmp_path: Path, script: str, found: bool) -> tuple[list[str], str]:
    """Run /init under busybox sh with a fake busybox: the applets it calls, and what it
    says on the console."""
    fake = tmp_path / "fake-busybox"
    fake.write_text(FAKE_BUSYBOX)
    fake.chmod(0o755)
    log = tmp_path / "calls"
    log.write_text("")
    script = script.replace("b=/usr/bin/busybox\n", f"b={fake}\n")
    env = {"LOG": str(log), "FOUND": "1" if found else "", "BROKEN": "jbd2.ko", "PATH": "/bin"}
    run = subprocess.run(["busybox", "sh", "-c", script], env=env, capture_output=True, text=True)
    return log.read_text().splitlines(), run.stdout


def test_stage_one_runs_in_order_and_fails_into_the_failure_action(tmp_path: Path) -> None:
    root = machine(tmp_path, ROOT_MOUNT)
    script = _plan(root, config.Config(failure_action="poweroff"))[1]
    calls, said = _run_stage_one(tmp_path, script, found=True)
    words = [c.split()[0] for c in calls]
    assert words[:3] == ["mount"] * 3 and calls[0] == "mount -t proc proc /proc"
    assert words.index("findfs") > max(i for i, w in enumerate(words) if w == "insmod")
    assert "mount -t ext4 /dev/vda1 /root" in calls
    assert f"cp /{environment.SETTINGS} /root/run/kdumpd/capture.json" in calls
    assert calls[-1].startswith("switch_root /root /usr/bin/py -I -c")
    assert "kdumpd: root file system /dev/vda1 mounted after 1.25 s" in said
    assert "FAILED" not in said

    calls, said = _run_stage_one(tmp_path, script, found=False)
    assert calls.count(f"findfs UUID={ROOT_UUID}") == int(init.DEVICE_TIMEOUT_S / 0.2)
    assert calls[-1] == "poweroff -f" and not any(c.startswith("switch_root") for c in calls)
    assert (
        f"kdumpd: capture FAILED: no root file system (UUID {ROOT_UUID}) within 60 s "
        "(modules that did not load: jbd2.ko)\nkdumpd: capture failed; poweroff\n"
    ) in said


def _recallable(tmp_path: Path) -> tuple[Path, str, Path, environment.Image]:
    """A fake machine whose capture initramfs was planned, built and remembered."""
    root = machine(tmp_path, ROOT_MOUNT)
    _plan(root, config.Config())  # installs the files the plan reads
    version = "6.1.0-50-amd64"
    cache = tmp_path / "cache"
    p = environment.plan(config.Config(), version, root, python="/usr/bin/py")
    image = environment.build(p, cache)
    environment.remember(p, image, cache)
    return root, version, cache, image


def _recall(root: Path, version: str, cache: Path, **cfg: object) -> environment.Image | None:
    cfg_ = config.Config(**cfg)  # type: ignore[arg-type]
    return environment.recall(cfg_, version, root, cache, python="/usr/bin/py")


def test_an_unchanged_machine_recalls_its_image_without_reading_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, version, cache, image = _recallable(tmp_path)

    def no_reading(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("recall read a file's contents")

    monkeypatch.setattr(environment.Contents, "file", no_reading)
    monkeypatch.setattr(environment.ModuleIndex, "read", no_reading)
    recalled = _recall(root, version, cache)
    assert recalled is not None
    assert (recalled.path, recalled.size, recalled.unpacked) == (
        image.path,
        image.size,
        image.unpacked,
    )


CHANGES = {
    "busybox rewritten": lambda root: (root / "usr/bin/busybox").write_bytes(b"#!/bin/sh\n#\n"),
    "busybox removed": lambda root: (root / "usr/bin/busybox").unlink(),
    "a module rewritten": lambda root: next((root / "lib/modules").rglob("ext4.ko")).write_bytes(
        b"another ext4"
    ),
    "modules.dep emptied": lambda root: next(
        (root / "lib/modules").rglob("modules.dep")
    ).write_text(""),
}


@pytest.mark.parametrize("change", CHANGES)
def test_any_change_to_what_the_plan_read_plans_again(tmp_path: Path, change: str) -> None:
    root, version, cache, _ = _recallable(tmp_path)
    assert _recall(root, version, cache) is not None
    CHANGES[change](root)
    assert _recall(root, version, cache) is None


def test_the_configuration_is_part_of_what_the_plan_was_made_from(tmp_path: Path) -> None:
    root, version, cache, _ = _recallable(tmp_path)
    assert _recall(root, version, cache, compression="zlib") is None
    assert _recall(root, version, cache, dump_path=Path("/srv")) is None
    assert _recall(root, version, cache, initrd=Path("/boot/initrd.img")) is None
    assert _recall(root, version, cache) is not None


def test_a_file_touched_but_equal_plans_again_to_the_same_image(tmp_path: Path) -> None:
    """Identity tells when to look again; contents decide whether to build (the file name
    is a hash of the archive)."""
    root, version, cache, image = _recallable(tmp_path)
    busybox = root / "usr/bin/busybox"
    os.utime(busybox, ns=(1, 1))
    assert _recall(root, version, cache) is None
    again = environment.plan(config.Config(), version, root, python="/usr/bin/py")
    assert environment.find(again, cache) == environment.Image(
        image.path, image.size, image.unpacked, 0.0, None
    )


@pytest.mark.parametrize(
    "manifest",
    [
        "not json",
        "[]",
        '{"key": 1}',
        "FIFO",
        "HUGE",
        "IMAGE ../../etc/passwd",
        "IMAGE initramfs-gone.img",
    ],
)
def test_a_damaged_manifest_plans_again(tmp_path: Path, manifest: str) -> None:
    root, version, cache, _ = _recallable(tmp_path)
    path = cache / environment.MANIFEST
    if manifest == "FIFO":
        path.unlink()
        os.mkfifo(path)
    elif manifest == "HUGE":
        path.write_bytes(b" " * (environment.MANIFEST_MAX + 1))
    elif manifest.startswith("IMAGE "):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "image": manifest.split()[1]}))
    else:
        path.write_text(manifest)
    assert _recall(root, version, cache) is None


def test_a_new_library_directory_plans_again(tmp_path: Path) -> None:
    root, version, cache, _ = _recallable(tmp_path)
    (root / "etc/ld.so.conf.d").mkdir(parents=True, exist_ok=True)
    assert _recall(root, version, cache) is None  # the directory appeared
    p = environment.plan(config.Config(), version, root, python="/usr/bin/py")
    environment.remember(p, environment.build(p, cache), cache)
    assert _recall(root, version, cache) is not None
    (root / "etc/ld.so.conf.d/x86_64-linux-gnu.conf").write_text("/opt/lib\n")
    assert _recall(root, version, cache) is None


ROUTE = network.Route("192.0.2.1", "ens3", "52:54:00:c0:00:02", "192.0.2.2", "", 1500,
                      ("virtio_net", "virtio_pci"))  # fmt: skip


def test_a_dump_sent_over_ssh_takes_the_nic_s_drivers_and_the_way_the_check_found(
    tmp_path: Path,
) -> None:
    root = machine(tmp_path, ROOT_MOUNT)
    key = tmp_path / "id_ed25519"
    key.write_text("a key\n")
    key.chmod(0o600)
    _installed(root, "usr/bin/ssh")
    (root / "etc/hostname").write_text("web-1.example.org\n")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    url = "ssh://kdump@dumps.example/srv/dumps"
    cfg = config.Config(target=target.parse(url), ssh_key=key)
    net = (
        "kernel/drivers/net/virtio_net.ko: kernel/net/core/failover.ko\n"
        "kernel/net/core/failover.ko:\n"
    )

    # Not checked yet: no way known, nothing sent, the plan as without a target.
    assert environment.sending(cfg, root) == (
        None, "the way to dumps.example is known once kdumpd-target-check.service checked it"
    )  # fmt: skip
    run = root / target.RUN_DIR
    run.mkdir(parents=True)
    target.record(target.Verdict(url, str(key), False, "refused", 1, ROUTE), run / target.VERDICT)
    settings, _, _ = _plan(root, cfg, net)
    send = settings["send"]
    assert send == {
        "url": url,
        "key": str(key),
        "known_hosts": str(target.KNOWN_HOSTS),
        "machine": "web-1-01234567",
        "route": {**dataclasses.asdict(ROUTE), "modules": list(ROUTE.modules)},
    }
    assert settings["modules"] == [  # virtio_pci is built in
        "/lib/modules/6.1.0-50-amd64/kernel/net/core/failover.ko",
        "/lib/modules/6.1.0-50-amd64/kernel/drivers/net/virtio_net.ko",
    ]
    programs = settings["programs"]
    assert programs["ssh"] == "/usr/bin/ssh" and programs["busybox"] == "/usr/bin/busybox"  # type: ignore[index]
    # What stage two makes of them.
    back = network.Route.from_json(send["route"])
    assert back == ROUTE


def test_a_dump_sent_to_nfs_takes_the_kernel_s_nfs_client_and_needs_no_ssh(
    tmp_path: Path,
) -> None:
    root = machine(tmp_path, ROOT_MOUNT)
    (root / "etc/hostname").write_text("db-2\n")
    (root / "etc/machine-id").write_text("fedcba9876543210fedcba9876543210\n")
    url = "nfs://192.0.2.1/srv/dumps"
    cfg = config.Config(target=target.parse(url))
    run = root / target.RUN_DIR
    run.mkdir(parents=True)
    target.record(target.Verdict(url, "", True, "reachable", 1, ROUTE), run / target.VERDICT)
    assert environment.sending(cfg, root) == (ROUTE, "")  # no ssh installed, no key
    nfs = (
        "kernel/fs/nfs/nfsv4.ko: kernel/fs/nfs/nfs.ko kernel/net/sunrpc/sunrpc.ko\n"
        "kernel/fs/nfs/nfs.ko: kernel/net/sunrpc/sunrpc.ko\n"
        "kernel/net/sunrpc/sunrpc.ko:\n"
        "kernel/drivers/net/virtio_net.ko:\n"
    )
    settings, _, _ = _plan(root, cfg, nfs)
    assert settings["send"] == {
        "url": url,
        "machine": "db-2-fedcba98",
        "route": {**dataclasses.asdict(ROUTE), "modules": list(ROUTE.modules)},
    }
    directory = "/lib/modules/6.1.0-50-amd64/kernel"
    assert settings["modules"] == [  # nfsv3 is not in this kernel: v4 alone then
        f"{directory}/net/sunrpc/sunrpc.ko",
        f"{directory}/fs/nfs/nfs.ko",
        f"{directory}/fs/nfs/nfsv4.ko",
        f"{directory}/drivers/net/virtio_net.ko",
    ]
    assert "ssh" not in settings["programs"]  # type: ignore[operator]
    # The image sends the way its plan was made with, also when recalled from the cache.
    p = environment.plan(cfg, "6.1.0-50-amd64", root, python="/usr/bin/py")
    image = environment.build(p, tmp_path / "cache")
    environment.remember(p, image, tmp_path / "cache")
    recalled = environment.recall(cfg, "6.1.0-50-amd64", root, tmp_path / "cache", "/usr/bin/py")
    assert image.route == ROUTE and recalled is not None and recalled.route == ROUTE

    # A kernel without an NFS client cannot send there: the plan says so.
    (root / "lib/modules/6.1.0-50-amd64/modules.dep").write_text("")
    with pytest.raises(environment.Unreachable, match="has no NFS client"):
        environment.plan(cfg, "6.1.0-50-amd64", root, python="/usr/bin/py")


def test_the_machine_s_folder_name_is_safe_and_its_own(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("we b/1.example\n")
    (tmp_path / "etc/machine-id").write_text("fedcba9876543210\n")
    assert environment.machine_name(tmp_path) == "we_b_1-fedcba98"
