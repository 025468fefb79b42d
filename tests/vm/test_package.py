"""Issue: the Debian package installs, enables, upgrades and purges cleanly, on a real guest."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.vm.guest import GuestFactory
from tests.vm.kdumpd_guest import BUSCTL, OBJ, ROOT, crash_loaded, other_errors, status, wait_state

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def bumped_deb(workdir: Path) -> tuple[Path, str]:
    """The same tree built as a newer version, as an upgrade would bring it."""
    src = workdir / "src"
    src.mkdir()
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(
        ["tar", "--null", "-T", "-", "-cf", str(workdir / "src.tar")],
        cwd=ROOT,
        input=files,
        check=True,
    )
    subprocess.run(["tar", "-xf", str(workdir / "src.tar"), "-C", str(src)], check=True)
    init = src / "kdumpd/__init__.py"
    text = init.read_text()
    version = re.search(r'__version__ = "([^"]+)"', text)
    assert version
    newer = version.group(1) + ".1"
    init.write_text(text.replace(version.group(0), f'__version__ = "{newer}"'))
    out = subprocess.run(
        [str(src / "packaging/build-deb.sh"), str(workdir / "out")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return Path(out.strip().splitlines()[-1]), newer


def test_install_upgrade_purge(make_guest: GuestFactory, kdumpd_deb: Path, tmp_path: Path) -> None:
    newer_deb, newer = bumped_deb(tmp_path)
    g = make_guest(append="crashkernel=256M")

    assert g.install_deb(kdumpd_deb) == "apt"
    assert g.run("systemctl is-enabled kdumpd").stdout.strip() == "enabled"
    assert g.run("systemctl is-active kdumpd").stdout.strip() == "active"
    assert wait_state(g)["State"] == "loaded" and crash_loaded(g) == "1"
    introspect = g.run(f"{BUSCTL} introspect {OBJ}").stdout
    for member in (".GetStatus", ".ListDumps", ".Reload", ".Unload", ".State", ".LastError"):
        assert member in introspect
    assert "dump_path: /var/crash" in g.run("cat /etc/kdumpd/kdumpd.yaml").stdout

    g.run("sed -i 's/^keep_dumps: 5$/keep_dumps: 3/' /etc/kdumpd/kdumpd.yaml")
    pid = g.run("systemctl show -p MainPID --value kdumpd").stdout.strip()
    g.copy_in(newer_deb, f"/tmp/{newer_deb.name}")
    g.run(["apt-get", "install", "-y", f"/tmp/{newer_deb.name}"], env=APT_ENV, timeout=600)
    assert g.run("dpkg-query -W -f '${Version}' kdumpd").stdout == newer
    assert g.run("systemctl show -p MainPID --value kdumpd").stdout.strip() != pid
    assert wait_state(g)["State"] == "loaded" and crash_loaded(g) == "1"
    assert "\nkeep_dumps: 3\n" in g.run("cat /etc/kdumpd/kdumpd.yaml").stdout
    assert other_errors(status(g)) == ""

    owned = g.run("dpkg -L kdumpd").stdout.split()  # before the purge: afterwards dpkg forgets
    g.run("mkdir -p /var/crash/2026-01-01-000000-x && touch /var/crash/2026-01-01-000000-x/vmcore")
    g.run(["apt-get", "purge", "-y", "kdumpd"], env=APT_ENV, timeout=600)
    assert g.run("systemctl cat kdumpd.service", check=False).rc != 0
    assert g.run("systemctl is-active kdumpd", check=False).stdout.strip() != "active"
    assert crash_loaded(g) == "0"
    files = [p for p in owned if g.run(["test", "-d", p], check=False).rc != 0]
    gone = ["/etc/kdumpd", "/var/lib/kdumpd", "/usr/lib/python3/dist-packages/kdumpd"]
    left = [p for p in files + gone if g.run(["test", "-e", p], check=False).rc == 0]
    assert left == [], g.run(["find", *left], check=False).stdout
    assert g.run("test -e /var/crash/2026-01-01-000000-x/vmcore", check=False).rc == 0
