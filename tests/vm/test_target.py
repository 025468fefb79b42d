"""Issue 12: ssh:// and nfs:// targets, set up with `kdumpd target-setup` and checked with
`kdumpd check --target`, against a second guest running Debian's openssh-server and
nfs-kernel-server. The daemon has no network of its own: at arming it has
kdumpd-target-check.service check the target (on the real systemd), and LastError tells
the verdict. A crash dump is sent over ssh, or written to the NFS export, by the capture
initramfs, the way the check found. The two guests' network: tests/vm/dump_server.py."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.vm import debs, dump_server
from tests.vm.dump_server import CLIENT, CLIENT_MAC, SERVER, SERVER_MAC
from tests.vm.guest import Guest, GuestFactory
from tests.vm.image import ImagePaths
from tests.vm.kdumpd_guest import crash_and_come_back, status, wait_armed, wait_for

URL = f"ssh://kdump@{SERVER}/home/kdump/dumps"
NFS_URL = f"nfs://{SERVER}/srv/dumps"


def _reconnect(g: Guest) -> None:
    """The test's address back after a reboot (it is not kept), and an interface coming up
    told as ifupdown tells it (its if-up.d hooks): the target is checked again."""
    if f"inet {CLIENT}/" not in g.run("busybox ip -4 addr").stdout:
        dump_server.set_address(g, CLIENT)
        g.run("IFACE=eth0 MODE=start PHASE=post-up /etc/network/if-up.d/kdumpd")


def _daemon_says(g: Guest, *words: str) -> str:
    """Until the daemon's LastError has all these words (its target's verdict came)."""
    wait_for(g, f"LastError with {words}", lambda s: all(w in s["LastError"] for w in words))
    return str(status(g)["LastError"])


def _check_target(g: Guest) -> tuple[int, str]:
    r = g.run("kdumpd check --target", check=False, timeout=180)
    lines = [line for line in (r.stdout + r.stderr).splitlines() if "target" in line]
    return r.rc, "\n".join(lines)


@pytest.fixture(scope="module")
def server_image(vm_image: ImagePaths, tmp_path_factory: pytest.TempPathFactory) -> ImagePaths:
    return dump_server.server_image(vm_image, tmp_path_factory.mktemp)


@pytest.fixture(scope="module")
def pair(
    make_guest_module: GuestFactory, server_image: ImagePaths, kdumpd_deb: Path
) -> tuple[Guest, Guest]:
    """The dump server and the client running kdumpd, on one network of their own."""
    port = dump_server.free_port()
    server = make_guest_module(
        cpus=1, image=server_image, extra_qemu_args=dump_server.nic("listen", port, SERVER_MAC)
    )
    client = make_guest_module(
        append="crashkernel=256M", extra_qemu_args=dump_server.nic("connect", port, CLIENT_MAC)
    )
    dump_server.set_address(server, SERVER)
    debs.install(client, "openssh-client")
    client.install_deb(kdumpd_deb)
    wait_armed(client)
    dump_server.set_address(client, CLIENT)
    return server, client


def test_an_ssh_target_is_set_up_and_checked_before_any_crash(pair: tuple[Guest, Guest]) -> None:
    server, client = pair
    client.write_file("/etc/kdumpd/kdumpd.yaml", f"target: {URL}\n".encode())

    # No key yet: the config names it, at its line.
    rc, said = _check_target(client)
    assert rc == 1 and (
        "kdumpd.yaml:1: ssh_key: /etc/kdumpd/id_ed25519: No such file or directory" in said
    ), said

    # target-setup makes the key; ssh-copy-id cannot log in with a password here (no
    # terminal), but has met the host and recorded its key.
    setup = client.run("kdumpd target-setup", check=False, timeout=180)
    assert setup.rc != 0 and "ssh-copy-id could not install" in setup.stderr, setup
    mode = client.run("stat -c %a /etc/kdumpd/id_ed25519").stdout.strip()
    assert mode == "600"
    # Debian's ssh_config hashes known host names: ssh-keygen -F finds them.
    known = client.run(f"ssh-keygen -F {SERVER} -f /etc/kdumpd/known_hosts", check=False)
    assert known.rc == 0 and "ssh-ed25519" in known.stdout, setup.stdout + setup.stderr
    rc, said = _check_target(client)
    assert rc == 1 and f"{SERVER}: permission denied: the host does not accept" in said, said

    # The admin puts the public key on the server: setup and check then pass.
    public = client.read_file("/etc/kdumpd/id_ed25519.pub")
    server.write_file("/home/kdump/.ssh/authorized_keys", public, 0o600)
    server.run("chown kdump:kdump /home/kdump/.ssh/authorized_keys")
    setup = client.run("kdumpd target-setup", check=False, timeout=180)
    assert setup.rc == 0 and f"target {URL}: reachable, writable" in setup.stdout, setup
    rc, said = _check_target(client)
    assert f"target {URL}: reachable, writable, " in said and "error" not in said, said
    assert server.run("stat -c %U /home/kdump/dumps").stdout.strip() == "kdump"
    assert server.run("ls -A /home/kdump/dumps").stdout == ""  # the probe's file is gone
    # The daemon had it checked when it armed.
    client.run("kdumpd reload")
    _daemon_says(client, f"target {URL}: reachable, writable, ")

    # A key the server does not know.
    client.run("ssh-keygen -q -t ed25519 -N '' -f /etc/kdumpd/other")
    client.write_file(
        "/etc/kdumpd/kdumpd.yaml", f"target: {URL}\nssh_key: /etc/kdumpd/other\n".encode()
    )
    rc, said = _check_target(client)
    assert rc == 1 and f"{SERVER}: permission denied" in said and "/etc/kdumpd/other" in said
    # The config's change armed again, and the check at arming found it too.
    said = _daemon_says(client, f"warning: target {URL}: {SERVER}: permission denied", "other")
    assert status(client)["State"] == "loaded"
    check = "systemctl is-failed kdumpd-target-check.service"
    deadline = time.monotonic() + 60  # the unit ends a moment after its verdict is written
    while (unit := client.run(check, check=False).stdout.strip()) != "failed":
        assert time.monotonic() < deadline, unit
        time.sleep(0.5)

    # The server's sshd stopped: refused, named, by the check and at arming.
    server.run("systemctl stop ssh.service")
    client.write_file("/etc/kdumpd/kdumpd.yaml", f"target: {URL}\n".encode())
    rc, said = _check_target(client)
    assert rc == 1 and f"{SERVER}: connection refused (no ssh server on port 22?)" in said, said
    _daemon_says(client, f"warning: target {URL}: {SERVER}: connection refused")
    assert status(client)["State"] == "loaded"

    # Back, and an interface comes up (ifupdown runs its if-up.d hooks so): checked again.
    server.run("systemctl start ssh.service")
    client.run("IFACE=eth0 MODE=start PHASE=post-up /etc/network/if-up.d/kdumpd")
    _daemon_says(client, f"target {URL}: reachable, writable, ")


def test_an_nfs_target_is_checked_before_any_crash(pair: tuple[Guest, Guest]) -> None:
    server, client = pair
    client.write_file("/etc/kdumpd/kdumpd.yaml", f"target: {NFS_URL}\n".encode())
    rc, said = _check_target(client)
    assert rc == 1 and f"{SERVER}: mount.nfs is not installed (Debian: nfs-common)" in said, said
    debs.install(client, "nfs-common")

    # Not exported yet.
    rc, said = _check_target(client)
    assert rc == 1 and f"{SERVER}: " in said, said
    assert "reachable, writable" not in said

    server.write_file("/etc/exports", f"/srv/dumps {CLIENT}/32(rw,no_root_squash,sync)\n".encode())
    server.run("exportfs -ra")
    rc, said = _check_target(client)
    assert f"target {NFS_URL}: reachable, writable, " in said and "error" not in said, said
    # The daemon's check mounts it too, in kdumpd-target-check.service's sandbox.
    client.run("kdumpd reload")
    _daemon_says(client, f"target {NFS_URL}: reachable, writable, ")
    assert server.run("ls -A /srv/dumps").stdout == ""  # the probe's file is gone
    assert client.run("grep -c ' nfs' /proc/mounts", check=False).stdout.strip() == "0"

    # root squashed: mounted, but root may not write there.
    server.write_file("/etc/exports", f"/srv/dumps {CLIENT}/32(rw,root_squash,sync)\n".encode())
    server.run("exportfs -ra")
    rc, said = _check_target(client)
    assert rc == 1 and f"{SERVER}: /srv/dumps is not writable for root: " in said, said


def _sent_dumps(g: Guest, url: str = URL) -> list[dict[str, object]]:
    listed = json.loads(g.run("kdumpd dumps --json").stdout)
    return [d for d in listed if str(d["Location"]).startswith(url)]


def _machine(g: Guest) -> str:
    """The machine's folder on a target: hostname-<8 of the machine-id>."""
    return g.run("hostname").stdout.strip() + "-" + g.run("head -c 8 /etc/machine-id").stdout


def _crash_and_send(server: Guest, client: Guest, url: str, origin: str, on_console: str) -> str:
    """Armed to send to `url` (the way the check found), a crash, the dump listed by the
    client after the reboot: its folder on the server (the location without its `origin`),
    which holds all four files."""
    said = _daemon_says(client, f"target {url}: a crash dump is sent there over ")
    assert f"({CLIENT})" in said and "warning: target" not in said, said
    assert wait_armed(client)["CaptureMode"] == "initramfs"
    offset = client.console_offset()
    crash_and_come_back(client, "capture complete")
    console = client.console_text(offset)
    assert on_console in console, console[-3000:]
    (sent,) = _sent_dumps(client, url)
    assert sent["Complete"] and sent["PanicMessage"] == "sysrq triggered crash", sent
    folder = str(sent["Location"]).removeprefix(origin)
    assert folder.startswith(f"{url.removeprefix(origin)}/{_machine(client)}/"), folder
    there = server.run(f"ls {folder}").stdout.split()
    assert sorted(there) == ["capture.log", "metadata.json", "vmcore", "vmcore-dmesg.txt"], there
    assert sent["SizeBytes"] == int(server.run(f"stat -c %s {folder}/vmcore").stdout) > 1 << 20
    return folder


def test_a_crash_dump_is_written_to_nfs_and_listed_after_the_reboot(
    pair: tuple[Guest, Guest],
) -> None:
    """Stage two mounts the export with the kernel's own NFS client (no mount.nfs in the
    crash kernel), as the check found it; the dump is makedumpfile's own format there."""
    server, client = pair
    server.write_file("/etc/exports", f"/srv/dumps {CLIENT}/32(rw,no_root_squash,sync)\n".encode())
    server.run("systemctl start nfs-server.service && exportfs -ra")
    debs.install(client, "nfs-common")  # the check's mount.nfs (the capture needs none)
    _reconnect(client)
    client.write_file("/etc/kdumpd/kdumpd.yaml", f"target: {NFS_URL}\n".encode())
    # The same target as the last test's, whose last verdict (root squashed) the daemon may
    # still tell: a check now is news for it, and it is waited for.
    rc, said = _check_target(client)
    assert rc == 0 and f"target {NFS_URL}: reachable, writable, " in said, said
    _daemon_says(client, f"target {NFS_URL}: reachable, writable, ")
    mounted = f"{SERVER}:/srv/dumps mounted (NFS 4.2)"
    folder = _crash_and_send(server, client, NFS_URL, f"nfs://{SERVER}", mounted)
    # Read back where it arrived: an ordinary dump, with the panic in its kernel log.
    server.run(f"makedumpfile --dump-dmesg {folder}/vmcore /tmp/dmesg.txt")
    dmesg = server.run("cat /tmp/dmesg.txt").stdout
    assert "Kernel panic - not syncing: sysrq triggered crash" in dmesg

    # The NFS server stopped: the check at arming says so (what a crash then does is the
    # ssh test's second crash; for NFS, stage two's mount fails: unit tests).
    server.run("systemctl stop nfs-server.service")
    _reconnect(client)
    _daemon_says(client, f"warning: target {NFS_URL}: {SERVER}: ", "a crash dump is sent there")


def test_a_crash_dump_is_sent_over_ssh_and_listed_after_the_reboot(
    pair: tuple[Guest, Guest], tmp_path: Path
) -> None:
    server, client = pair
    server.run("systemctl start ssh.service")
    _reconnect(client)
    # As the first test left it (key made and installed, host key known), also when run alone.
    client.run(
        "test -e /etc/kdumpd/id_ed25519 || { ssh-keygen -q -t ed25519 -N '' -f "
        f"/etc/kdumpd/id_ed25519 && ssh-keyscan -t ed25519 {SERVER} > /etc/kdumpd/known_hosts; }}"
    )
    server.write_file(
        "/home/kdump/.ssh/authorized_keys", client.read_file("/etc/kdumpd/id_ed25519.pub"), 0o600
    )
    server.run("chown kdump:kdump /home/kdump/.ssh/authorized_keys")
    client.write_file("/etc/kdumpd/kdumpd.yaml", f"target: {URL}\n".encode())
    # The check found the way (eth0 on the link); the capture initramfs was loaded again
    # with it.
    up = f"up as {CLIENT}, for {SERVER}"
    folder = _crash_and_send(server, client, URL, f"ssh://kdump@{SERVER}", up)

    # The server down before the crash: the check at arming says so, the capture fails and
    # says why on the client; no vmcore there. This boot armed before the network was up
    # (the test's address is not kept across boots): an interface coming up checks again,
    # and the way found loads the capture initramfs again.
    server.run("systemctl stop ssh.service")
    _reconnect(client)
    said = _daemon_says(client, f"{SERVER}: connection refused", "a crash dump is sent there")
    crash_and_come_back(client, "capture failed")
    failed = [d for d in _sent_dumps(client) if not d["Complete"]]
    assert len(failed) == 1 and f"{SERVER}: connection refused" in str(failed[0]["Error"]), failed
    said = client.run("kdumpd dumps").stdout
    assert "NOT SAVED: " in said and "connection refused" in said, said
    assert server.run("find /home/kdump/dumps -name vmcore").stdout.split() == [f"{folder}/vmcore"]

    # The dump that arrived, read back on the host: makedumpfile -R makes the flattened
    # stream an ordinary dump again.
    server.shutdown()
    flat = tmp_path / "vmcore.flat"
    flat.write_bytes(server.debugfs_cat(f"{folder}/vmcore"))
    vmcore, dmesg = tmp_path / "vmcore", tmp_path / "dmesg.txt"
    with flat.open("rb") as stream:
        subprocess.run(["makedumpfile", "-R", str(vmcore)], stdin=stream, check=True)
    subprocess.run(["makedumpfile", "--dump-dmesg", str(vmcore), str(dmesg)], check=True)
    assert "Kernel panic - not syncing: sysrq triggered crash" in dmesg.read_text()
