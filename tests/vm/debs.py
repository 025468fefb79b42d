"""Debian packages for the guests, from the host's apt sources: the guests have no network.

`install(guest, name)` asks the host's apt what installing `name` would pull in on top of
the guest's own dpkg status, downloads those once into the cache, and installs them from
files in the guest."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from tests.vm.guest import Guest
from tests.vm.image import CACHE_ROOT, SUITE, debian_mirror, locked

DEBS = CACHE_ROOT / "debs"


def apt_options(suite: str) -> list[str]:
    """apt's options for another release than the host's: its own sources (the host's
    mirrors: `suite`, -updates, -security), lists and cache under CACHE_ROOT, updated once
    a day (a security update removes the package it replaces from the mirror)."""
    if suite == SUITE:
        return []
    state = CACHE_ROOT / f"apt-{suite}"
    options = [
        f"-oDir::Etc::sourcelist={state / 'sources.list'}",
        "-oDir::Etc::sourceparts=-",
        f"-oDir::State::Lists={state / 'lists'}",
        f"-oDir::Cache={state / 'cache'}",
        "-oDir::State::status=/dev/null",
    ]
    with locked(CACHE_ROOT / f".apt-{suite}.lock"):
        updated = state / "updated"
        if not updated.exists() or time.time() - updated.stat().st_mtime > 86400:
            for d in ("lists/partial", "cache/archives/partial"):
                (state / d).mkdir(parents=True, exist_ok=True)
            keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
            (state / "sources.list").write_text(
                "".join(
                    f"deb [signed-by={keyring}] {debian_mirror(s)} {s} main\n"
                    for s in (suite, f"{suite}-updates", f"{suite}-security")
                )
            )
            subprocess.run(
                ["apt-get", *options, "update", "-q"], capture_output=True, text=True, check=True
            )
            updated.touch()
    return options


def search(pattern: str, suite: str = SUITE) -> list[str]:
    """Package names apt knows for `suite` that match this regular expression."""
    out = subprocess.run(
        ["apt-cache", *apt_options(suite), "search", "--names-only", pattern],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split(" ", 1)[0] for line in out.splitlines() if line]


def download(name: str, suite: str = SUITE) -> Path:
    """A package fetched once with apt-get download (the newest apt knows for `suite`),
    kept in a folder per release."""
    folder = DEBS if suite == SUITE else DEBS / suite
    folder.mkdir(parents=True, exist_ok=True)
    with locked(DEBS / ".lock"):  # concurrent sessions must not see a half-downloaded file
        found = sorted(folder.glob(f"{name}_*.deb"))
        if not found:
            dl = subprocess.run(
                ["apt-get", *apt_options(suite), "download", "-q", name],
                cwd=folder,
                capture_output=True,
                text=True,
                check=False,
            )
            found = sorted(folder.glob(f"{name}_*.deb"))
            if dl.returncode != 0 or not found:
                raise RuntimeError(
                    f"apt-get download {name} failed ({dl.returncode}):\n{dl.stderr}"
                )
    return found[-1]


def missing(g: Guest, package: str) -> list[str]:
    """What installing `package` in the guest pulls in: apt on this host answers, reading
    the guest's dpkg status instead of the host's."""
    with tempfile.NamedTemporaryFile() as status:
        status.write(g.read_file("/var/lib/dpkg/status"))
        status.flush()
        plan = subprocess.run(
            [
                "apt-get",
                "-s",
                "-o",
                f"Dir::State::status={status.name}",
                "install",
                "--no-install-recommends",
                package,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return [line.split()[1] for line in plan.splitlines() if line.startswith("Inst ")]


def install(g: Guest, package: str, timeout: float = 900) -> None:
    paths = []
    for deb in (download(name) for name in missing(g, package)):
        g.copy_in(deb, f"/tmp/{deb.name}")
        paths.append(f"/tmp/{deb.name}")
    if paths:
        g.run(
            ["apt-get", "install", "-y", "--no-install-recommends", *paths],
            timeout=timeout,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )
