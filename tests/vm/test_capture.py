"""Issue: crash capture, end to end: a panic (`kdumpd test`: Test() over D-Bus, the
kdumpd-crash units, sysrq), the crash kernel kdumpd loaded boots, makedumpfile saves the
dump, the machine comes back, lists it over D-Bus and gives the test's verdict."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.vm.guest import Guest, GuestFactory
from tests.vm.kdumpd_guest import (
    BUSCTL,
    OBJ,
    crash_and_come_back,
    journal,
    status,
    wait_armed,
    wait_state,
)

MSG_DUMP_SAVED = "9ee3014d253246aeaf477c6f3b7f0088"
MSG_TEST_RESULT = "22d8ba01049948d4b798e6a50901e0b5"
KDUMPD_TEST = ("/usr/bin/kdumpd", "test", "--yes")


def _test_verdict(g: Guest) -> tuple[str, str]:
    """LastTestResult, and the verdict's journal entry."""
    return status(g)["LastTestResult"], journal(g, f"MESSAGE_ID={MSG_TEST_RESULT}")


def test_crash_capture_and_listing(make_guest: GuestFactory, kdumpd_deb: Path) -> None:
    g = make_guest(append="crashkernel=256M")
    g.install_deb(kdumpd_deb)
    wait_armed(g)
    refused = g.run("kdumpd test --yes", user="tester", check=False)
    assert refused.rc == 1 and "permission denied" in refused.stderr, refused
    assert status(g)["LastTestResult"] == ""
    crash_and_come_back(g, "capture complete", KDUMPD_TEST)

    wait_state(g)
    result, entry = _test_verdict(g)
    assert result == "passed" and "passed: the crash was captured" in entry, entry
    listed = json.loads(g.run("kdumpd dumps --json").stdout)
    assert len(listed) == 1, listed
    dump = listed[0]
    assert dump["Complete"] is True and dump["Error"] == ""
    assert dump["PanicMessage"] == "sysrq triggered crash"
    assert dump["KernelVersion"] == g.run("uname -r").stdout.strip()
    assert dump["SizeBytes"] > 1 << 20
    folder = dump["Path"]
    assert folder.startswith("/var/crash/")
    human = g.run("kdumpd dumps").stdout
    assert folder in human and "complete" in human and "sysrq triggered crash" in human
    over_dbus = g.run(f"{BUSCTL} call {OBJ} ListDumps", user="tester").stdout
    assert '"PanicMessage" s "sysrq triggered crash"' in over_dbus
    assert '"Complete" b true' in over_dbus
    # one announcement, with its MESSAGE_ID, on the first start after the capture
    announced = journal(g, f"MESSAGE_ID={MSG_DUMP_SAVED}")
    assert announced.count("a crash dump was saved") == 1, announced
    g.run("systemctl restart kdumpd")
    wait_state(g)
    assert journal(g, f"MESSAGE_ID={MSG_DUMP_SAVED}").count("a crash dump was saved") == 1

    # A test with a dump path that cannot be written fails, in the crash kernel's words.
    g.run("chattr +i /var/crash")
    crash_and_come_back(g, "capture failed", KDUMPD_TEST)
    wait_state(g)
    result, entry = _test_verdict(g)
    assert result == "failed" and "Operation not permitted: '/var/crash/" in entry, entry
    assert "Last test:     failed" in g.run("kdumpd status", check=False).stdout
    g.run("chattr -i /var/crash")

    g.shutdown()
    names = g.debugfs_ls(folder)
    assert {"vmcore", "vmcore-dmesg.txt", "metadata.json", "capture.log"} <= set(names), names
    assert "vmcore.incomplete" not in names
    header = g.debugfs_cat(f"{folder}/vmcore")[:8]
    assert header in (b"KDUMP   ", b"\x7fELF\x02\x01\x01\x00"), header
    assert b"sysrq triggered crash" in g.debugfs_cat(f"{folder}/vmcore-dmesg.txt")
    meta = json.loads(g.debugfs_cat(f"{folder}/metadata.json"))
    assert meta["complete"] is True and meta["compression"] == "lzo" and meta["dump_level"] == 31
    assert meta["panic_message"] == "sysrq triggered crash" and meta["duration_s"] > 0
    log = g.debugfs_cat(f"{folder}/capture.log").decode()
    assert "makedumpfile Completed." in log and "kdumpd: dump saved" in log, log


# A second disk, too small for the dump, mounted on /var/crash as an administrator would.
SMALL_DISK_FSTAB = """
set -e
echo '/dev/vdb /var/crash ext4 defaults 0 2' >> /etc/fstab
mount /var/crash
printf 'min_free_space: 1M\\nfailure_action: reboot\\n' > /etc/kdumpd/kdumpd.yaml
"""


def test_capture_failure_on_a_full_file_system(
    make_guest: GuestFactory, kdumpd_deb: Path, tmp_path: Path
) -> None:
    small = tmp_path / "small.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(small), "16M"], check=True)
    g = make_guest(
        append="crashkernel=256M",
        extra_qemu_args=["-drive", f"file={small},format=raw,if=virtio"],
    )
    g.install_deb(kdumpd_deb)
    g.run(SMALL_DISK_FSTAB)
    g.run("kdumpd reload")
    assert wait_armed(g)["Initrd"].startswith("/var/cache/kdumpd/")
    crash_and_come_back(g, "capture failed", KDUMPD_TEST)

    wait_state(g)
    result, entry = _test_verdict(g)
    assert result == "failed" and "the dump file system is full" in entry, entry
    assert g.run("findmnt -n -o SOURCE /var/crash").stdout.strip() != ""
    listed = json.loads(g.run("kdumpd dumps --json").stdout)
    assert len(listed) == 1, listed
    dump = listed[0]
    assert dump["Complete"] is False
    assert "full" in dump["Error"], dump
    assert dump["PanicMessage"] == "sysrq triggered crash"
    assert "vmcore\n" not in g.run(f"ls -1 {dump['Path']}").stdout
    assert g.run(f"test -e {dump['Path']}/vmcore", check=False).rc == 1
    assert "could not be saved" in journal(g, f"MESSAGE_ID={MSG_DUMP_SAVED}")
    assert "INCOMPLETE" in g.run("kdumpd dumps").stdout
    assert "the dump file system is full" in g.run(f"cat {dump['Path']}/capture.log").stdout
