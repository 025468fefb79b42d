"""kdumpd.service starts before dbus.socket exists (units/kdumpd.service): the daemon loads
the crash kernel without the bus, then waits for the bus and serves on it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.dbus.conftest import ROOT, Service, bus_workdir, private_bus, wait_until
from tests.fakes import make_sysroot


def _env(address: str) -> dict[str, str]:
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address, PYTHONPATH=str(ROOT))
    env.pop("NOTIFY_SOCKET", None)
    return env


def test_the_first_load_comes_before_the_bus_and_the_daemon_serves_once_it_is_there() -> None:
    workdir = bus_workdir()
    release = os.uname().release
    sysroot = make_sysroot(workdir / "root", running=release, versions=(release,))
    config = workdir / "kdumpd.yaml"
    config.write_text(f"dump_path: {workdir / 'crash'}\n")
    loaded = sysroot / "sys/kernel/kexec_crash_loaded"
    assert loaded.read_text().strip() == "0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.dbus.fake_daemon", str(sysroot), str(config)],
        env=_env(f"unix:path={workdir}/bus"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: loaded.read_text().strip() == "1", 60, "the first load, no bus yet")
        assert proc.poll() is None, "the daemon gave up without a bus"
        with private_bus(workdir) as bus:
            service = Service(bus, sysroot, config, proc)
            service.wait_state("loaded", timeout=60)
            proc.terminate()
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_no_bus_at_all_is_an_error_in_the_journal_not_a_traceback() -> None:
    workdir = bus_workdir()
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from kdumpd import dbus_service; "
            "sys.exit(7 if dbus_service.connect(1.0) is None else 0)",
        ],
        env=_env(f"unix:path={workdir}/no-bus-here"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 7, run.stderr
    assert "no system bus after 1 s" in run.stderr
    assert "Traceback" not in run.stderr
