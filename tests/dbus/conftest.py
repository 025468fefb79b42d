"""A real dbus-daemon with the system bus's rules and the project's policy file."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydbus import connect

from tests.fakes import make_sysroot

ROOT = Path(__file__).parents[2]
NOBODY = 65534
POLKIT_POLICY = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")


def _bus_config(workdir: Path) -> Path:
    """Debian's system.conf, listening in workdir, reading only our policy (and polkit's)."""
    text = Path("/usr/share/dbus-1/system.conf").read_text()
    for drop in (
        r"<user>.*?</user>",
        r"<fork/>",
        r"<pidfile>.*?</pidfile>",
        r"<syslog/>",
        r"<standard_system_servicedirs/>",
        r"<servicehelper>.*?</servicehelper>",
        r"<includedir>.*?</includedir>",
        r"<include [^>]*>.*?</include>",
    ):
        text = re.sub(drop, "", text)
    policies = workdir / "system.d"
    policies.mkdir()
    shutil.copy(ROOT / "conf/org.kdumpd.Kdump1.conf", policies)
    if POLKIT_POLICY.exists():
        shutil.copy(POLKIT_POLICY, policies)
    # As in system.conf, service policies come last so that they can punch holes.
    text = re.sub(r"<listen>.*?</listen>", f"<listen>unix:path={workdir}/bus</listen>", text)
    text = text.replace("</busconfig>", f"<includedir>{policies}</includedir></busconfig>")
    path = workdir / "bus.conf"
    path.write_text(text)
    return path


def _as(user: int | None, args: tuple[str, ...]) -> list[str]:
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    return [*prefix, *args]


@dataclass
class Bus:
    address: str
    env: dict[str, str]
    workdir: Path

    def run(
        self,
        *args: str,
        user: int | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _as(user, args), env=self.env, capture_output=True, text=True, check=check, timeout=60
        )

    def start(self, *args: str, user: int | None = None) -> subprocess.Popen[str]:
        """As run, without waiting: communicate() gives the output."""
        return subprocess.Popen(
            _as(user, args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def busctl(self, *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("busctl", f"--address={self.address}", *args, user=user)

    def kdumpd(self, *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "kdumpd.cli", *args, user=user)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def bus_workdir() -> Path:
    """Where a private bus keeps its socket and config: readable by the unprivileged test
    user, unlike pytest's tmp_path. Its socket will be unix:path=WORKDIR/bus."""
    workdir = Path(tempfile.mkdtemp(prefix="kdumpd-bus-"))
    workdir.chmod(0o755)
    return workdir


@contextlib.contextmanager
def private_bus(workdir: Path | None = None) -> Iterator[Bus]:
    """A system bus of our own (the tests' and bench.dbus_memory's), in `workdir`."""
    workdir = workdir or bus_workdir()
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={_bus_config(workdir)}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address, PYTHONPATH=str(ROOT))
    env.pop("NOTIFY_SOCKET", None)
    try:
        yield Bus(address, env, workdir)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Service:
    bus: Bus
    sysroot: Path
    config: Path
    proc: subprocess.Popen[str]

    def state(self) -> str:
        out = self.bus.busctl(
            "get-property", "org.kdumpd.Kdump1", "/org/kdumpd/Kdump1", "org.kdumpd.Kdump1", "State"
        ).stdout
        return out.split('"')[1] if '"' in out else ""

    def wait_state(self, *states: str, timeout: float = 30) -> None:
        wait_until(lambda: self.state() in states, timeout, f"State in {states}")


@pytest.fixture
def bus() -> Iterator[Bus]:
    with private_bus() as b:
        yield b


@contextlib.contextmanager
def fake_service(
    bus: Bus, polkit_timeout_s: float | None = None, env: dict[str, str] | None = None
) -> Iterator[Service]:
    """The daemon on `bus` (tests/dbus/fake_daemon.py), once its first load has finished;
    its stderr is printed when it stops. `env` adds to its environment."""
    sysroot = make_sysroot(
        bus.workdir / "root", running=os.uname().release, versions=(os.uname().release,)
    )
    config = bus.workdir / "kdumpd.yaml"
    config.write_text("dump_path: " + str(bus.workdir / "crash") + "\n")
    timeout = [] if polkit_timeout_s is None else [str(polkit_timeout_s)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.dbus.fake_daemon", str(sysroot), str(config), *timeout],
        env={**bus.env, **(env or {})},
        stderr=subprocess.PIPE,
        text=True,
    )
    svc = Service(bus, sysroot, config, proc)
    try:
        svc.wait_state("loaded", "failed", "no-reservation")
        yield svc
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        print(err, file=sys.stderr)


def write_dumps(service: Service) -> None:
    """Two saved dumps in the service's dump path, for ListDumps to describe."""
    for name in ("2026-12-01-101010-6.1.0-50-amd64", "2026-12-02-111111-6.1.0-50-amd64"):
        folder = service.bus.workdir / "crash" / name
        folder.mkdir(parents=True)
        (folder / "metadata.json").write_text(
            '{"time_usec": 1764583810000000, "kernel_version": "6.1.0-50-amd64",'
            ' "panic_message": "Kernel panic - not syncing: sysrq triggered crash"}'
        )
        (folder / "vmcore").write_bytes(b"\0" * 4096)


@pytest.fixture
def service(bus: Bus, request: pytest.FixtureRequest) -> Iterator[Service]:
    """Parametrize indirectly with fake_service's keywords ({"polkit_timeout_s": 2})."""
    with fake_service(bus, **getattr(request, "param", {})) as svc:
        yield svc


@pytest.fixture
def polkit(bus: Bus) -> Iterator[Any]:
    """python-dbusmock's polkitd on the test bus; returns its control interface (SetAllowed,
    SimulateHang, HaveHangingCalls, ReleaseHangingCalls). It refuses everything at first."""
    import dbusmock  # type: ignore[import-untyped]

    # The mock runs as polkitd, the only user polkit's bus policy lets own its name.
    uid = pwd.getpwnam("polkitd").pw_uid
    mock = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "/usr/bin/python3",
            "-m",
            "dbusmock",
            "--system",
            "--template",
            "polkitd",
        ],
        env=bus.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: bus.busctl("status", "org.freedesktop.PolicyKit1").returncode == 0,
            30,
            "the polkit mock",
        )
        authority = connect(bus.address).get(
            "org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority"
        )
        yield authority[dbusmock.MOCK_IFACE]
    finally:
        mock.terminate()
        mock.wait(timeout=10)
