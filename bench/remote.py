"""Dumps sent over ssh to another machine: kdumpd against Debian's kdump-tools, in the same
run, on the same guest images.

For each: the dump server (the target tests' image, Debian's openssh-server, a user kdump)
and a fresh stock Debian 12 client (Debian's default initramfs, 1 GiB, 2 vCPUs, QEMU TCG,
crashkernel=256M) on a network of their own (tests/vm/dump_server.py), the client's
address configured with ifupdown as an admin would (kdump-tools' crash boot brings the
network up that way: its unit runs after networking.service), the service installed from
its package, its key made and installed on the server and the server's host key recorded
(what `kdumpd target-setup` and `kdump-config propagate` do, without a password prompt).
Then a reboot, the crash kernel armed for the server, a sysrq crash, and the seconds from
the panic to each phase on the console and to the dump saved on the server. Prints one
table (bench/run.py's). No assertions but that the dump arrived: numbers.

    python -m bench.remote [SERVICE ...]    in that order, repeats allowed; none: each once
                                            (make bench: kdumpd kdump-tools)
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.run import boot_load_seconds, crash_timings, print_table, warm
from tests.vm import debs, dump_server
from tests.vm.dump_server import CLIENT, CLIENT_MAC, SERVER, SERVER_MAC
from tests.vm.guest import BootOptions, Guest
from tests.vm.image import ensure_image
from tests.vm.kdumpd_guest import build_deb, crash_loaded, wait_for

URL = f"ssh://kdump@{SERVER}/home/kdump/dumps"


@dataclass
class Service:
    name: str
    unit: str
    install: Callable[[Guest, Guest], None]  # (client, server)
    armed: Callable[[Guest], None]  # waits until the crash kernel sends to the server
    saved: str  # console text once the dump is on the server
    found: str  # a shell command on the server that lists the dump file


def _authorize(server: Guest, public_key: bytes) -> None:
    server.write_file("/home/kdump/.ssh/authorized_keys", public_key, 0o600)
    server.run("chown kdump:kdump /home/kdump/.ssh/authorized_keys")


def install_kdumpd(deb: Path) -> Callable[[Guest, Guest], None]:
    def install(client: Guest, server: Guest) -> None:
        client.install_deb(deb)
        client.run("ssh-keygen -q -t ed25519 -N '' -f /etc/kdumpd/id_ed25519")
        client.run(f"ssh-keyscan -t ed25519 {SERVER} > /etc/kdumpd/known_hosts")
        _authorize(server, client.read_file("/etc/kdumpd/id_ed25519.pub"))
        client.write_file("/etc/kdumpd/kdumpd.yaml", f"target: {URL}\n".encode())

    return install


def kdumpd_armed(client: Guest) -> None:
    """The check found the way and the capture initramfs that sends was loaded with it."""

    def sending(s: dict[str, object]) -> bool:
        said = str(s["LastError"])
        return s["CaptureMode"] == "initramfs" and f"target {URL}: a crash dump is sent" in said

    wait_for(client, "armed to send", sending, timeout=300)


def install_kdump_tools(client: Guest, server: Guest) -> None:
    # Its postinst builds kdump-tools' initrd and dpkg's trigger the machine's again
    # (MODULES=most): more than debs.install's 900 s beside the server's guest under TCG.
    debs.install(client, "kdump-tools", timeout=2400)
    client.run(
        "sed -i 's/^USE_KDUMP=.*/USE_KDUMP=1/' /etc/default/kdump-tools && "
        f"echo 'SSH=\"kdump@{SERVER}\"' >> /etc/default/kdump-tools"
    )
    # kdump-config's default key; ssh checks the host key against root's known_hosts.
    client.run(
        "install -d -m 700 /root/.ssh && ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/kdump_id_rsa"
        f" && ssh-keyscan {SERVER} > /root/.ssh/known_hosts"
    )
    _authorize(server, client.read_file("/root/.ssh/kdump_id_rsa.pub"))
    server.run("install -d -o kdump /var/crash")  # KDUMP_COREDIR, on the server too
    client.run("systemctl enable kdump-tools && systemctl restart kdump-tools", timeout=900)


def kdump_tools_armed(client: Guest) -> None:
    deadline = time.monotonic() + 300
    while crash_loaded(client) != "1":
        assert time.monotonic() < deadline, "kdump-tools did not load a crash kernel"
        time.sleep(1)


def _network(client: Guest) -> None:
    """The client's address as ifupdown keeps it, so that every boot has it."""
    for package in ("ifupdown", "openssh-client"):
        debs.install(client, package)
    name = dump_server.interface(client)
    stanza = f"auto {name}\niface {name} inet static\n    address {CLIENT}/24\n"
    client.write_file("/etc/network/interfaces.d/dumps", stanza.encode())
    client.run(f"ifup {name}", timeout=120)


def measure(service: Service, workdir: Path) -> dict[str, float]:
    port = dump_server.free_port()
    server_image = dump_server.server_image(
        ensure_image(), lambda name: Path(tempfile.mkdtemp(prefix=name, dir=workdir))
    )
    server_options = BootOptions(
        cpus=1, extra_qemu_args=dump_server.nic("listen", port, SERVER_MAC)
    )
    client_options = BootOptions(
        append="crashkernel=256M", extra_qemu_args=dump_server.nic("connect", port, CLIENT_MAC)
    )
    with (
        Guest(server_image, workdir / "server", "server", server_options) as server,
        Guest(ensure_image(stock=True), workdir / service.name, service.name, client_options) as g,
    ):
        server.start()  # first: it listens, the client's NIC connects to it
        g.start()
        server.wait_booted()
        dump_server.set_address(server, SERVER)
        g.wait_booted()
        _network(g)
        service.install(g, server)
        offset = g.reboot()
        g.wait_console(r"Linux version", 300, offset)
        g.wait_booted()
        service.armed(g)
        results = {"boot: load crash kernel (s)": boot_load_seconds(g, service.unit)}
        results |= crash_timings(g, service.saved, "panic -> dump on the server (s)")
        found = server.run(service.found).stdout.split()
        assert len(found) == 1, f"{service.name}: on the server: {found}"
        size = int(server.run(f"stat -c %s {found[0]}").stdout)
        results["dump on the server (MiB)"] = size / (1 << 20)
        print(f"{service.name}: {found[0]} on the server", file=sys.stderr)
        g.shutdown()
        server.shutdown()
    return results


def main(argv: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="kdumpd-bench-remote-"))
    deb = build_deb(work)
    services = {
        "kdumpd": Service(
            "kdumpd",
            "kdumpd.service",
            install_kdumpd(deb),
            kdumpd_armed,
            r"kdumpd: dump saved: ssh://",
            "find /home/kdump/dumps -name vmcore",
        ),
        "kdump-tools": Service(
            "kdump-tools",
            "kdump-tools.service",
            install_kdump_tools,
            kdump_tools_armed,
            r"saved vmcore in",
            "find /var/crash -name 'dump.*'",
        ),
    }
    order = argv or list(services)
    runs = []
    for i, name in enumerate(order):
        warm(ensure_image(stock=True))
        runs.append(measure(services[name], work / str(i)))
        print(f"{name} #{i + 1}: {runs[-1]}", flush=True)  # kept if a later run fails
    print_table(order, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
