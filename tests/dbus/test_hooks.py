"""The kernel hooks (conf/hooks/) on a real dbus-daemon: they ask a running kdumpd to
reload, and they are quiet and harmless where it is not running, and never fail."""

from __future__ import annotations

import subprocess

import pytest

from tests.dbus.conftest import NOBODY, ROOT, Bus, Service, wait_until

V = "6.1.0-56-amd64"

# Each hook as its caller runs it: dpkg's kernel postinst/postrm (run-parts), the initramfs
# post-update.d (update-initramfs), kernel-install(8).
ACTING = {
    "kernel-postinst": ([V, f"/boot/vmlinuz-{V}"], {"DEB_MAINT_PARAMS": "configure"}),
    "kernel-postrm": ([V, f"/boot/vmlinuz-{V}"], {"DEB_MAINT_PARAMS": "remove"}),
    "initramfs-post-update": ([V, f"/boot/initrd.img-{V}"], {}),
    "90-kdumpd.install": (["add", V, f"/boot/efi/x/{V}", f"/boot/vmlinuz-{V}"], {}),
}

# Calls where there is nothing to do: purge after remove, an aborted upgrade, and
# kernel-install verbs other than add and remove.
IDLE = {
    "kernel-postinst": ([V, f"/boot/vmlinuz-{V}"], {"DEB_MAINT_PARAMS": "abort-upgrade 6.1.76-1"}),
    "kernel-postrm": ([V, f"/boot/vmlinuz-{V}"], {"DEB_MAINT_PARAMS": "purge"}),
    "90-kdumpd.install": (["inspect", V, f"/boot/efi/x/{V}"], {}),
}


def run_hook(
    bus: Bus, name: str, call: tuple[list[str], dict[str, str]], user: int | None = None
) -> subprocess.CompletedProcess[str]:
    args, env = call
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    return subprocess.run(
        [*prefix, "sh", str(ROOT / "conf/hooks" / name), *args],
        env={**bus.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def syscalls(service: Service) -> int:
    return len((service.sysroot / "fake-syscalls").read_text().splitlines())


@pytest.mark.parametrize("name", sorted(ACTING))
def test_a_hook_asks_the_daemon_to_reload(service: Service, name: str) -> None:
    assert syscalls(service) == 1  # the first load
    r = run_hook(service.bus, name, ACTING[name])
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    wait_until(lambda: syscalls(service) == 2, 30, f"the reload {name} asked for")
    service.wait_state("loaded")


@pytest.mark.parametrize("name", sorted(IDLE))
def test_a_hook_with_nothing_to_do_asks_nothing(service: Service, name: str) -> None:
    r = run_hook(service.bus, name, IDLE[name])
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    # A Reload turns State to "loading" before its reply, so the hook would have seen it.
    assert service.state() == "loaded" and syscalls(service) == 1


@pytest.mark.parametrize("name", sorted(ACTING))
def test_without_the_daemon_a_hook_is_quiet(bus: Bus, name: str) -> None:
    """A chroot or an image build: a bus without kdumpd on it."""
    r = run_hook(bus, name, ACTING[name])
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@pytest.mark.parametrize("name", sorted(ACTING))
def test_without_a_bus_a_hook_is_quiet(bus: Bus, name: str) -> None:
    nowhere = {**ACTING[name][1], "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={bus.workdir}/none"}
    r = run_hook(bus, name, (ACTING[name][0], nowhere))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@pytest.mark.parametrize("name", sorted(ACTING))
def test_a_refused_reload_never_fails_the_package(service: Service, name: str) -> None:
    """Run by someone the daemon does not obey: one line on stderr, exit status 0."""
    r = run_hook(service.bus, name, ACTING[name], user=NOBODY)
    assert r.returncode == 0 and r.stdout == ""
    assert r.stderr.startswith("kdumpd: reload after") and "kdumpd status" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert service.state() == "loaded" and syscalls(service) == 1
