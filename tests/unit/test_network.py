"""The way to a target, from a fake /proc/net/route and sysfs (the real one: the daemon's
check and the crash kernel in tests/vm/test_target.py)."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest

from kdumpd import network

# /proc/net/route of a guest with 192.0.2.2/24 on ens3 and a default route via 192.0.2.254,
# plus a more specific route to 198.51.100.0/24 on ens4 (metric 100 and 50).
PROC_NET_ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
ens3\t00000000\tFE0200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
ens3\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
ens4\t006433C6\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
ens5\t006433C6\t00000000\t0001\t0\t0\t50\t00FFFFFF\t0\t0\t0
ens6\t00000000\t00000000\t0000\t0\t0\t0\t00000000\t0\t0\t0
"""


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("192.0.2.1", ("ens3", "")),  # on the link
        ("203.0.113.7", ("ens3", "192.0.2.254")),  # the default route's gateway
        ("198.51.100.9", ("ens5", "")),  # the longest prefix, then the lowest metric
    ],
)
def test_the_route_is_the_longest_match_with_its_gateway(
    host: str, expected: tuple[str, str]
) -> None:
    assert network.route_to(ipaddress.IPv4Address(host), PROC_NET_ROUTE) == expected


def test_no_route_says_so() -> None:
    header = PROC_NET_ROUTE.splitlines()[0]
    with pytest.raises(network.NoRoute, match=r"no route to 192\.0\.2\.1"):
        network.route_to(ipaddress.IPv4Address("192.0.2.1"), header)


def _sysfs(root: Path) -> None:
    """ens3: virtio_net on virtio0 on a PCI device driven by virtio_pci; lo is virtual."""
    pci = root / "sys/devices/pci0000:00/0000:00:03.0"
    dev = pci / "virtio0"
    for device, module in ((dev, "virtio_net"), (pci, "virtio_pci")):
        device.mkdir(parents=True, exist_ok=True)
        drv = root / f"sys/bus/x/drivers/{module}"
        (root / f"sys/module/{module}").mkdir(parents=True)
        drv.mkdir(parents=True)
        (drv / "module").symlink_to(os.path.relpath(root / f"sys/module/{module}", drv))
        (device / "driver").symlink_to(os.path.relpath(drv, device))
    net = dev / "net/ens3"
    net.mkdir(parents=True)
    (net / "address").write_text("52:54:00:C0:00:02\n")
    (net / "carrier").write_text("1\n")
    (root / "sys/class/net").mkdir(parents=True)
    (root / "sys/class/net/ens3").symlink_to(os.path.relpath(net, root / "sys/class/net"))
    (net / "device").symlink_to(os.path.relpath(dev, net))
    (root / "sys/devices/virtual/net/lo").mkdir(parents=True)
    (root / "sys/devices/virtual/net/lo/address").write_text("00:00:00:00:00:00\n")
    (root / "sys/class/net/lo").symlink_to("../../devices/virtual/net/lo")


def test_the_drivers_are_the_device_s_and_its_buses(tmp_path: Path) -> None:
    _sysfs(tmp_path)
    assert network.drivers(tmp_path, "ens3") == ("virtio_net", "virtio_pci")
    with pytest.raises(network.NoRoute, match="lo is a virtual interface"):
        network.drivers(tmp_path, "lo")


def test_the_interface_is_found_again_by_its_mac(tmp_path: Path) -> None:
    _sysfs(tmp_path)
    assert network.interface_with("52:54:00:c0:00:02", tmp_path) == "ens3"
    assert network.interface_with("52:54:00:c0:00:99", tmp_path) is None
    assert network.carrier("ens3", tmp_path) and not network.carrier("lo", tmp_path)


ROUTE = network.Route("192.0.2.1", "ens3", "52:54:00:c0:00:02", "192.0.2.2", "", 1500,
                      ("virtio_net", "virtio_pci"))  # fmt: skip


def test_busybox_ip_makes_a_host_route_on_the_link_or_through_the_gateway() -> None:
    assert network.commands(ROUTE, "eth0") == [
        ["link", "set", "dev", "eth0", "mtu", "1500", "up"],
        ["addr", "add", "192.0.2.2/32", "dev", "eth0"],
        ["route", "add", "192.0.2.1/32", "dev", "eth0"],
    ]
    via = dataclasses.replace(ROUTE, host="203.0.113.7", gateway="192.0.2.254")
    assert network.commands(via, "eth0")[2:] == [
        ["route", "add", "192.0.2.254/32", "dev", "eth0"],
        ["route", "add", "203.0.113.7/32", "via", "192.0.2.254", "dev", "eth0"],
    ]


def test_a_route_from_a_verdict_file_is_checked_field_by_field() -> None:
    good = {**dataclasses.asdict(ROUTE), "modules": list(ROUTE.modules)}
    assert network.Route.from_json(good) == ROUTE
    bad: object
    for bad in (
        [],
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "mtu"},
        {**good, "mtu": "1500"},
        {**good, "host": "not an address"},
        {**good, "gateway": "::1"},
        {**good, "modules": "virtio_net"},
        {**good, "modules": [1]},
        {**good, "interface": None},
    ):
        with pytest.raises(ValueError):
            network.Route.from_json(bad)


def test_this_machine_is_no_target() -> None:
    with pytest.raises(network.NoRoute, match=r"127\.0\.0\.1 is this machine"):
        network.find("127.0.0.1")


# Stage two's NFS mount (kdumpd/init.py): the kernel's own client, no mount.nfs.


def test_nfs_mount_options_carry_the_addresses_found_before_the_crash() -> None:
    from kdumpd import init

    route = network.Route("192.0.2.1", "eth0", "52:54:00:c0:00:02", "192.0.2.2", "", 1500, ())
    assert init.nfs_options("4.2", route) == (
        "vers=4.2,addr=192.0.2.1,proto=tcp,soft,timeo=100,retrans=2,clientaddr=192.0.2.2"
    )
    # No rpc.statd in the crash kernel: NFSv3 without locks.
    assert init.nfs_options("3", route).endswith(",mountproto=tcp,nolock")


def _exports(tmp_path: Path, tried: list[str], answers: dict[str, int]) -> Any:
    from kdumpd import init, remote, target

    def mount(source: str, at: str, fstype: str, options: str) -> None:
        version = options.split(",")[0].removeprefix("vers=")
        with (tmp_path / "tried").open("a") as f:  # the child's: a file carries it back
            f.write(f"{source} {fstype} {version}\n")
        if answers.get(version):
            raise OSError(answers[version], os.strerror(answers[version]))

    route = network.Route("192.0.2.1", "eth0", "52:54:00:c0:00:02", "192.0.2.2", "", 1500, ())
    nfs = remote.Nfs(target.NfsTarget("dumps.example", "/srv/dumps"), "192.0.2.1",
                     "web-1-01234567", tmp_path / "mnt")  # fmt: skip

    def run() -> None:
        (tmp_path / "tried").write_text("")
        try:
            init.mount_export(nfs, route)
        finally:
            tried[:] = (tmp_path / "tried").read_text().splitlines()

    return init, mount, run


def test_nfs_versions_are_tried_until_the_server_speaks_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from kdumpd import remote

    tried: list[str] = []
    names: list[str] = []
    init, mount, run = _exports(tmp_path, tried, {"4.2": errno.EPROTONOSUPPORT,
                                                  "4.1": errno.EPROTONOSUPPORT})  # fmt: skip
    monkeypatch.setattr(init, "mount", mount)
    monkeypatch.setattr(init.socket, "sethostname", names.append)
    run()
    assert tried == ["192.0.2.1:/srv/dumps nfs 4.2", "192.0.2.1:/srv/dumps nfs 4.1",
                     "192.0.2.1:/srv/dumps nfs 4.0"]  # fmt: skip
    assert names == ["web-1-01234567"]  # the NFSv4 client's identity: not "(none)"

    # Another error is the server's answer: no other version is tried.
    init, mount, run = _exports(tmp_path, tried, {"4.2": errno.ECONNREFUSED})
    monkeypatch.setattr(init, "mount", mount)
    with pytest.raises(remote.SendError) as refused:
        run()
    assert str(refused.value) == (
        "dumps.example (192.0.2.1): cannot mount /srv/dumps: Connection refused"
    )
    assert len(tried) == 1


def test_a_mount_that_hangs_ends_within_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import time

    from kdumpd import init

    began = time.monotonic()
    assert init._bounded(lambda: time.sleep(60), 0.5) == errno.ETIMEDOUT
    assert time.monotonic() - began < 30
    assert init._bounded(lambda: None, 5) == 0

    def refused() -> None:
        raise OSError(errno.EACCES, "Permission denied")

    assert init._bounded(refused, 5) == errno.EACCES


def test_stage_two_makes_the_sender_the_plan_settled_and_mounts_an_export_once_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From the send settings environment.plan writes (its own test) to what stage two does."""
    from kdumpd import init, remote

    route = network.Route("192.0.2.1", "eth0", "52:54:00:c0:00:02", "192.0.2.2", "", 1500, ())
    send = {"url": "nfs://dumps.example/srv/dumps", "machine": "web-1-01234567",
            "route": {**dataclasses.asdict(route), "modules": []}}  # fmt: skip
    nfs, back = init.sender(send, {})
    assert back == route and isinstance(nfs, remote.Nfs)
    assert (nfs.address, nfs.machine, nfs.mountpoint) == ("192.0.2.1", "web-1-01234567",
                                                          init.NFS_MOUNT)  # fmt: skip
    done: list[str] = []
    monkeypatch.setattr(init, "bring_up", lambda r, busybox: done.append(f"up {busybox}"))
    monkeypatch.setattr(init, "mount_export", lambda n, r: done.append(f"mount {n.target.url}"))
    init.network_up(nfs, route, "/usr/bin/busybox")
    assert done == ["up /usr/bin/busybox", "mount nfs://dumps.example/srv/dumps"]

    ssh_settings = {
        **send,
        "url": "ssh://kdump@dumps.example/srv",
        "key": "/k",
        "known_hosts": "/h",
    }
    ssh, _ = init.sender(ssh_settings, {"ssh": "/usr/bin/ssh"})
    assert isinstance(ssh, remote.Ssh) and ssh.program == "/usr/bin/ssh"
    done.clear()
    init.network_up(ssh, route, "/usr/bin/busybox")
    assert done == ["up /usr/bin/busybox"]  # nothing to mount


def test_a_mount_that_failed_says_why_in_words() -> None:
    import errno

    from kdumpd import init

    assert init._mount_failure(errno.ETIMEDOUT) == "no answer within 60 s"
    assert init._mount_failure(errno.EACCES) == "Permission denied"
    assert init._mount_failure(init.GAVE_NO_ANSWER) == "the mount failed and said nothing"
