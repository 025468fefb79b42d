"""A dump server and its client on a network of their own, for the target tests and the
remote benchmark: one QEMU socket network carried on 127.0.0.1 (the server listens, the
client connects), no other network interface, addresses from 192.0.2.0/24 (a
documentation range). The server is the tests' image with Debian's openssh-server and
nfs-kernel-server and a user kdump, made once and cached beside it."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from pathlib import Path

from tests.vm import debs
from tests.vm.guest import Guest, derived_image
from tests.vm.image import ImagePaths

SERVER, CLIENT = "192.0.2.1", "192.0.2.2"
SERVER_MAC, CLIENT_MAC = "52:54:00:c0:00:01", "52:54:00:c0:00:02"
SERVER_PACKAGES = ("openssh-server", "nfs-kernel-server")
SERVER_SETUP = (
    "useradd -m -s /bin/sh kdump && install -d -m 700 -o kdump -g kdump ~kdump/.ssh && "
    "install -d -m 755 /srv/dumps"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nic(role: str, port: int, mac: str) -> list[str]:
    """QEMU's arguments for the one NIC: role "listen" (the server) or "connect"."""
    return [
        "-netdev",
        f"socket,id=net0,{role}=127.0.0.1:{port}",
        "-device",
        f"virtio-net-pci,netdev=net0,mac={mac}",
    ]


def interface(g: Guest) -> str:
    """The guest's one network interface (besides lo)."""
    found = g.run("ls /sys/class/net | grep -v '^lo$'").stdout.split()
    assert len(found) == 1, found
    return found[0]


def set_address(g: Guest, address: str) -> None:
    """The interface up with `address`, by busybox's ip (minbase has no iproute2)."""
    name = interface(g)
    g.run(f"busybox ip addr add {address}/24 dev {name} && busybox ip link set {name} up")


def server_image(base: ImagePaths, mktemp: Callable[[str], Path]) -> ImagePaths:
    """The dump server's image, keyed by the packages' files and the setup."""
    stems = "+".join(debs.download(p).stem for p in SERVER_PACKAGES)

    def install(g: Guest) -> tuple[str, str]:
        for package in SERVER_PACKAGES:
            debs.install(g, package)
        g.run(SERVER_SETUP)
        release = g.run("uname -r").stdout.strip()
        return f"/boot/vmlinuz-{release}", f"/boot/initrd.img-{release}"

    key = hashlib.sha256(f"{stems}\n{SERVER_SETUP}".encode()).hexdigest()[:12]
    return derived_image(base, f"dump-server-{key}", install, mktemp)
