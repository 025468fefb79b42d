"""The crash kernel's way to a dump target: the interface that routes to it now, found
where the network is (kdumpd-target-check.service; the daemon has none), and brought up
again in the capture environment the way it is now.

Only what reaching that one host takes: its address, no DNS in the crash kernel; this
machine's address on the interface as a /32, and a route to the host (through the gateway
when there is one). The interface is found again by its MAC address, since names may
differ in the crash kernel, and its drivers (the device's and its buses', from sysfs) are
loaded from the crash kernel's modules. IPv4 only, so far.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# /proc/net/route's RTF_UP and RTF_GATEWAY (linux/route.h).
RTF_UP, RTF_GATEWAY = 0x1, 0x2
CARRIER_TIMEOUT_S = 30.0


class NoRoute(Exception):
    """The target cannot be reached from here the way the crash kernel would need."""


@dataclass(frozen=True)
class Route:
    """How this machine reaches the target's host now."""

    host: str  # the host's IPv4 address
    interface: str  # its name now, for messages
    mac: str  # how the crash kernel finds the interface again
    address: str  # this machine's address on it
    gateway: str  # "" when the host is on the link
    mtu: int
    modules: tuple[str, ...]  # the drivers of the device and the buses above it

    @classmethod
    def from_json(cls, value: Any) -> Route:
        """From a verdict file, every field checked: ValueError if one is not right."""
        if not isinstance(value, dict) or set(value) != set(cls.__dataclass_fields__):
            raise ValueError("not a route")
        texts = ("host", "interface", "mac", "address", "gateway")
        if not all(type(value[k]) is str for k in texts) or type(value["mtu"]) is not int:
            raise ValueError("a route's field has the wrong type")
        modules = value["modules"]
        if not isinstance(modules, list) or not all(type(m) is str for m in modules):
            raise ValueError("a route's modules are not names")
        for k in ("host", "address", *(("gateway",) if value["gateway"] else ())):
            ipaddress.IPv4Address(value[k])
        return cls(**{**value, "modules": tuple(modules)})

    def __str__(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        return f"{self.interface} ({self.address}{via})"


def _hex_ip(text: str) -> ipaddress.IPv4Address:
    """/proc/net/route's addresses: the kernel's __be32 printed as a host-order number."""
    return ipaddress.IPv4Address(int(text, 16).to_bytes(4, sys.byteorder))


def route_to(host: ipaddress.IPv4Address, proc_net_route: str) -> tuple[str, str]:
    """The interface and gateway ("" if none) of the main table's longest match for host,
    as /proc/net/route lists it (fib_lookup's answer for routes without policy rules)."""
    best: tuple[int, int, str, str] | None = None  # prefix, -metric, interface, gateway
    for line in proc_net_route.splitlines()[1:]:
        f = line.split()
        if len(f) < 8 or not int(f[3], 16) & RTF_UP:
            continue
        net = ipaddress.IPv4Network(f"{_hex_ip(f[1])}/{_hex_ip(f[7])}", strict=False)
        if host not in net:
            continue
        gateway = str(_hex_ip(f[2])) if int(f[3], 16) & RTF_GATEWAY else ""
        candidate = (net.prefixlen, -int(f[6]), f[0], gateway)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    if best is None:
        raise NoRoute(f"no route to {host}")
    return best[2], best[3]


def drivers(sysroot: Path, interface: str) -> tuple[str, ...]:
    """The modules of the interface's device and of every device above it (virtio_net
    needs virtio_pci, say); none for a virtual interface."""
    device = sysroot / "sys/class/net" / interface / "device"
    if not device.exists():
        raise NoRoute(f"{interface} is a virtual interface (no device): it cannot be brought up")
    found: list[str] = []
    here = device.resolve()
    while here != sysroot / "sys/devices" and here != here.parent:
        module = here / "driver/module"
        if module.exists() and (name := module.resolve().name) not in found:
            found.append(name)
        here = here.parent
    return tuple(found)


def _read(path: Path) -> str:
    return path.read_text().strip()


def find(host: str, sysroot: Path = Path("/")) -> Route:
    """How host is reached from here now (where the network is); NoRoute if it is not."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as e:
        raise NoRoute(f"{host} has no IPv4 address ({e.strerror or e})") from None
    address = ipaddress.IPv4Address(infos[0][4][0])
    if address.is_loopback:
        raise NoRoute(f"{host} is this machine ({address}), which a crash takes down too")
    interface, gateway = route_to(address, _read(sysroot / "proc/net/route"))
    # A datagram socket's connect sends nothing: it asks the kernel for the source address.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((str(address), 9))
        except OSError as e:
            raise NoRoute(f"no route to {address} ({e.strerror})") from None
        source = s.getsockname()[0]
    if source == str(address):
        raise NoRoute(f"{host} is this machine ({address}), which a crash takes down too")
    net = sysroot / "sys/class/net" / interface
    return Route(
        host=str(address),
        interface=interface,
        mac=_read(net / "address"),
        address=source,
        gateway=gateway,
        mtu=int(_read(net / "mtu")),
        modules=drivers(sysroot, interface),
    )


# In the crash kernel (kdumpd/init.py), with busybox's ip: Debian's minbase has no iproute2.


def interface_with(mac: str, sysroot: Path = Path("/")) -> str | None:
    for net in sorted((sysroot / "sys/class/net").glob("*")):
        try:
            if _read(net / "address").lower() == mac.lower():
                return net.name
        except OSError:
            continue  # gone while looking
    return None


def commands(route: Route, interface: str) -> list[list[str]]:
    """busybox ip's commands that make the route as it was."""
    dev = ["dev", interface]
    steps = [
        ["link", "set", *dev, "mtu", str(route.mtu), "up"],
        ["addr", "add", f"{route.address}/32", *dev],
    ]
    if route.gateway:
        steps += [
            ["route", "add", f"{route.gateway}/32", *dev],
            ["route", "add", f"{route.host}/32", "via", route.gateway, *dev],
        ]
    else:
        steps.append(["route", "add", f"{route.host}/32", *dev])
    return steps


def wait(what: str, ready: Any, timeout: float) -> None:
    """Poll until ready() (drivers probe and links come up in their own time)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise NoRoute(f"{what} within {timeout:.0f} s")
        time.sleep(0.1)


def carrier(interface: str, sysroot: Path = Path("/")) -> bool:
    try:
        return _read(sysroot / "sys/class/net" / interface / "carrier") == "1"
    except OSError:  # EINVAL while the link is down
        return False
