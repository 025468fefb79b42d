"""The daemon's D-Bus API on a real dbus-daemon with the project's policy, called like busctl."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from gi.repository import Gio, GLib
from pydbus import connect

from tests.dbus.conftest import NOBODY, Bus, Service, wait_until

NAME = "org.kdumpd.Kdump1"
PATH = "/org/kdumpd/Kdump1"


def get(svc: Service, prop: str, user: int | None = None) -> str:
    r = svc.bus.busctl("get-property", NAME, PATH, NAME, prop, user=user)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def status(svc: Service) -> dict[str, Any]:
    r = svc.bus.kdumpd("status", "--json")
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def test_introspection_shows_the_spec_api(service: Service) -> None:
    out = service.bus.busctl("introspect", NAME, PATH, NAME).stdout
    for member in ("GetStatus", "ListDumps", "Reload", "Unload", "Test"):
        assert f".{member}" in out
    for prop, sig in (
        ("State", "s"),
        ("CrashKernelLoaded", "b"),
        ("ReservedBytes", "t"),
        ("RecommendedBytes", "t"),
        ("KernelVersion", "s"),
        ("KernelImage", "s"),
        ("Initrd", "s"),
        ("CommandLine", "s"),
        ("LastLoadUsec", "t"),
        ("LastError", "s"),
        ("ConfigPath", "s"),
        ("LastTestResult", "s"),
        ("LastTestUsec", "t"),
    ):
        assert any(line.split()[:3] == [f".{prop}", "property", sig] for line in out.splitlines())
    assert any(line.split()[:3] == [".DumpFound", "signal", "a{sv}"] for line in out.splitlines())


def test_anyone_can_read_the_status(service: Service) -> None:
    assert get(service, "State", user=NOBODY) == 's "loaded"'
    assert get(service, "CrashKernelLoaded", user=NOBODY) == "b true"
    assert get(service, "ReservedBytes") == f"t {256 << 20}"
    r = service.bus.busctl("call", NAME, PATH, NAME, "GetStatus", user=NOBODY)
    assert r.returncode == 0, r.stderr
    assert '"State" s "loaded"' in r.stdout and '"CrashKernelLoaded" b true' in r.stdout
    r = service.bus.busctl("call", NAME, PATH, NAME, "ListDumps", user=NOBODY)
    assert r.returncode == 0 and r.stdout.strip() == "aa{sv} 0"


@pytest.mark.parametrize("method", ["Reload", "Unload"])
def test_others_are_denied_the_privileged_methods(service: Service, method: str) -> None:
    before = get(service, "LastLoadUsec")
    r = service.bus.busctl("call", NAME, PATH, NAME, method, user=NOBODY)
    assert r.returncode != 0
    assert "Access denied" in r.stderr or "AccessDenied" in r.stderr, r.stderr
    assert get(service, "State") == 's "loaded"'
    assert get(service, "LastLoadUsec") == before


def test_unprivileged_cli_gets_a_one_line_error(service: Service) -> None:
    r = service.bus.kdumpd("unload", user=NOBODY)
    assert r.returncode == 1
    assert r.stderr.startswith("kdumpd unload: permission denied") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_polkit_can_authorize_others(service: Service, polkit: Any) -> None:
    polkit.SetAllowed(["org.kdumpd.Kdump1.reload"])
    before = int(get(service, "LastLoadUsec").split()[1])
    r = service.bus.busctl("call", NAME, PATH, NAME, "Reload", user=NOBODY)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: int(get(service, "LastLoadUsec").split()[1]) > before, 30, "reload")
    r = service.bus.busctl("call", NAME, PATH, NAME, "Unload", user=NOBODY)
    assert "Access denied" in r.stderr or "AccessDenied" in r.stderr, r.stderr


def test_reload_emits_properties_changed(service: Service) -> None:
    bus = connect(service.bus.address)
    seen: list[dict[str, Any]] = []
    loop = GLib.MainLoop()

    def fired(*args: Any) -> None:
        iface, changed, _ = args[4]
        assert iface == NAME
        seen.append(changed)
        if changed.get("State") == "loaded":
            loop.quit()

    bus.subscribe(
        sender=NAME,
        iface="org.freedesktop.DBus.Properties",
        signal="PropertiesChanged",
        object=PATH,
        signal_fired=fired,
    )
    bus.get(NAME, PATH).Reload()
    GLib.timeout_add_seconds(30, loop.quit)
    loop.run()
    assert {"State": "loading"} in seen
    # The final State comes once the load's details are out, with them or after them.
    final = next(i for i, c in enumerate(seen) if c.get("State") == "loaded")
    assert any("LastLoadUsec" in c for c in seen[: final + 1]), seen


def test_cli_status_reload_unload_exit_codes(service: Service) -> None:
    r = service.bus.kdumpd("status")
    assert r.returncode == 0 and "State:" in r.stdout and "loaded" in r.stdout
    r = service.bus.kdumpd("unload")
    assert r.returncode == 0, r.stderr
    assert get(service, "CrashKernelLoaded") == "b false"
    assert (service.sysroot / "sys/kernel/kexec_crash_loaded").read_text().strip() == "0"
    r = service.bus.kdumpd("status")
    assert r.returncode == 3 and "not-loaded" in r.stdout
    r = service.bus.kdumpd("reload")
    assert r.returncode == 0, r.stderr
    assert status(service)["State"] == "loaded"


def test_broken_config_keeps_the_crash_kernel(service: Service) -> None:
    before = status(service)
    service.config.write_text("dump_level: 31\nfinal_action: explode\n")
    r = service.bus.kdumpd("reload")
    assert r.returncode == 0  # still loaded: the old crash kernel protects the machine
    after = status(service)
    assert after["State"] == "loaded" and after["CrashKernelLoaded"]
    assert f"{service.config}:2: final_action: 'explode'" in after["LastError"]
    assert after["LastLoadUsec"] == before["LastLoadUsec"]
    service.config.write_text("")
    assert service.bus.kdumpd("reload").returncode == 0
    assert status(service)["LastError"] == ""


def test_reload_waits_for_its_own_load(service: Service) -> None:
    """`kdumpd reload` right after a config edit, while the edit's own (slow) reload runs:
    it must wait for a load that reads the config as it is now, and succeed."""
    (service.sysroot / "fake-load-seconds").write_text("4")
    service.config.write_text(f"dump_path: {service.bus.workdir}/crash\ncmdline_append: [a=1]\n")
    service.wait_state("loading")  # the watcher's reload for the edit has begun
    service.config.write_text(f"dump_path: {service.bus.workdir}/crash\ncmdline_append: [a=2]\n")
    r = service.bus.kdumpd("reload")
    assert r.returncode == 0, r.stderr
    after = status(service)
    assert after["State"] == "loaded" and "a=2" in after["CommandLine"], after


def test_a_reload_asked_during_a_load_of_the_same_files_is_served_by_it(
    service: Service,
) -> None:
    """A kernel install asks twice (the initramfs hook, the kernel hook) and writes the
    initrd: a request that comes while the load for the first is under way, with no file
    changed since that load read them, must not make a second load."""
    syscalls = service.sysroot / "fake-syscalls"
    (service.sysroot / "fake-load-seconds").write_text("3")
    first = subprocess.Popen(
        [sys.executable, "-m", "kdumpd.cli", "reload"], env=service.bus.env, text=True
    )
    wait_until(lambda: len(syscalls.read_text().splitlines()) == 2, 30, "the load to begin")
    second = service.bus.kdumpd("reload")
    assert first.wait(timeout=60) == 0
    assert second.returncode == 0, second.stderr
    # `kdumpd reload` returns once the request is served, so no load can still come.
    assert len(syscalls.read_text().splitlines()) == 2
    assert status(service)["State"] == "loaded"


def voluntary_switches(pid: int) -> int:
    """How often the process's threads went to sleep: each time, something woke them."""
    total = 0
    for status_file in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status_file.read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def test_the_idle_daemon_sleeps(service: Service) -> None:
    """No polling, and here no watchdog (no systemd): nothing wakes an idle daemon."""
    assert service.state() == "loaded"
    # The window being measured, not a wait for an event. A window more: on a busy host
    # the start's last steps (after State is loaded) may fall into the first.
    for _ in range(2):
        before = voluntary_switches(service.proc.pid)
        time.sleep(5)
        woke = voluntary_switches(service.proc.pid) - before
        if woke <= 1:
            break
    assert woke <= 1


def test_unload_waits_for_the_unload(service: Service) -> None:
    (service.sysroot / "fake-load-seconds").write_text("3")  # the unload syscall too
    r = service.bus.kdumpd("unload")
    assert r.returncode == 0, r.stdout + r.stderr
    assert get(service, "CrashKernelLoaded") == "b false"


def test_sighup_reloads(service: Service) -> None:
    before = status(service)["LastLoadUsec"]
    service.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: status(service)["LastLoadUsec"] > before, 30, "a reload after SIGHUP")
    assert status(service)["State"] == "loaded"


def test_the_name_is_not_taken_over(service: Service, bus: Bus) -> None:
    r = bus.run(
        sys.executable, "-m", "tests.dbus.fake_daemon", str(service.sysroot), str(service.config)
    )
    assert r.returncode == 1 and "cannot own org.kdumpd.Kdump1" in r.stderr
    r = bus.run(
        sys.executable,
        "-m",
        "tests.dbus.fake_daemon",
        str(service.sysroot),
        str(service.config),
        user=NOBODY,
    )
    assert r.returncode == 1
    assert service.proc.poll() is None and get(service, "State") == 's "loaded"'


def test_cli_without_a_daemon_is_one_line(bus: Bus) -> None:
    r = bus.kdumpd("status")
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "kdumpd status: the kdumpd daemon is not running "
        "(org.kdumpd.Kdump1 has no owner on the system bus)"
    )


def test_an_internal_error_is_a_typed_d_bus_error(service: Service) -> None:
    (service.sysroot / "fake-dumps-error").write_text("metadata.json: time_usec is Infinity")
    r = service.bus.busctl("call", NAME, PATH, NAME, "ListDumps", user=NOBODY)
    assert r.returncode != 0
    assert "ListDumps failed (internal error): metadata.json: time_usec is Infinity" in r.stderr
    bus = connect(service.bus.address)
    with pytest.raises(GLib.Error) as e:
        bus.get(NAME, PATH).ListDumps()
    assert Gio.DBusError.get_remote_error(e.value) == "org.kdumpd.Kdump1.Error.Failed"
    r = service.bus.kdumpd("dumps")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        "kdumpd dumps: ListDumps failed (internal error): metadata.json: time_usec is Infinity"
    )
    assert get(service, "State") == 's "loaded"'  # and the daemon goes on


def test_reload_then_unload_ends_unloaded_and_stays_so(service: Service) -> None:
    """Issue 11: `kdumpd reload` then, 0.15-0.6 s later, `kdumpd unload` ended loaded (the
    reload waited in the coalescer, the unload did not). Requests are served in order
    now, and after an unload a config edit loads nothing until a Reload."""
    for gap in (0.0, 0.15, 0.6):
        # Reload is queued when busctl returns; then the unload, this soon after (the
        # stimulus, not a wait for an event).
        assert service.bus.busctl("call", NAME, PATH, NAME, "Reload").returncode == 0
        time.sleep(gap)
        unload = service.bus.kdumpd("unload")
        assert unload.returncode == 0, unload.stderr
        s = status(service)
        assert (s["State"], s["CrashKernelLoaded"]) == ("not-loaded", False), (gap, s)
    service.config.write_text("cmdline_append: [edited=1]\n")
    service.wait_state("loading")  # the edit's request, queued
    service.wait_state("not-loaded")  # and served: without loading
    assert status(service)["CrashKernelLoaded"] is False
    r = service.bus.kdumpd("reload")
    assert r.returncode == 0, r.stderr
    assert status(service)["State"] == "loaded" and "edited=1" in status(service)["CommandLine"]
    service.config.write_text("")
    assert service.bus.kdumpd("reload").returncode == 0


def test_a_slow_dump_path_does_not_stall_the_daemon(service: Service) -> None:
    """Issue 11: ListDumps read the dump path on the main loop. While a scan takes its
    time, everything else is answered; calls that come meanwhile share the next scan."""
    (service.sysroot / "fake-dumps-seconds").write_text("8")
    listing = [
        service.bus.start("busctl", f"--address={service.bus.address}", "call", NAME, PATH,
                          NAME, "ListDumps")
        for _ in range(3)
    ]  # fmt: skip
    for _ in range(5):
        assert get(service, "State") == 's "loaded"'
    assert service.bus.kdumpd("status").returncode == 0
    assert all(p.poll() is None for p in listing)  # still scanning, and nobody waited
    (service.sysroot / "fake-dumps-seconds").unlink()
    for p in listing:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and out.startswith("aa{sv} "), err


def test_the_target_s_verdict_reaches_last_error_without_a_reload(service: Service) -> None:
    """Issue 12: the daemon asks for the check, `kdumpd target-check` (what
    kdumpd-target-check.service runs, here by hand) makes it with the real ssh against a
    closed loopback port, and the daemon's watcher brings the verdict to LastError."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    key = service.bus.workdir / "id_ed25519"
    key.write_text("not a key, but the check will not get so far\n")
    key.chmod(0o600)
    url = f"ssh://kdump@127.0.0.1:{port}/srv/dumps"
    service.config.write_text(f"target: {url}\nssh_key: {key}\n")
    assert service.bus.kdumpd("reload").returncode == 0
    before = status(service)
    assert f"target {url}: not checked yet" in before["LastError"], before
    run = service.sysroot / "run/kdumpd"
    assert (run / "target-check").exists()

    r = service.bus.kdumpd("target-check", "--config", str(service.config), "--run-dir", str(run))
    refused = f"target {url}: 127.0.0.1: connection refused (no ssh server on port {port}?)"
    assert r.returncode == 1 and refused in r.stderr, r
    assert not (run / "target-check").exists()
    wait_until(lambda: refused in status(service)["LastError"], 30, "the verdict")
    after = status(service)
    assert (
        f"warning: {refused}" in after["LastError"] and "not checked yet" not in after["LastError"]
    )
    assert after["State"] == "loaded" and after["LastLoadUsec"] == before["LastLoadUsec"]

    # The target gone from the config: the check removes its verdict, LastError forgets it.
    service.config.write_text("")
    assert service.bus.kdumpd("reload").returncode == 0
    r = service.bus.kdumpd("target-check", "--config", str(service.config), "--run-dir", str(run))
    assert r.returncode == 0 and not (run / "target.json").exists()
    assert status(service)["LastError"] == ""
