"""Where dumps go when not to the local dump_path: the `target` URL of the SPEC.

    ssh://USER@HOST[:PORT]/PATH        nfs://HOST/EXPORT[/SUBDIR]

What is wrong with a URL is said in words an admin can act on (config.py adds the file
and line). No passwords in URLs: ssh authenticates with the key in `ssh_key`, and knows
the host by /etc/kdumpd/known_hosts, which `kdumpd target-setup` fills (ssh-copy-id).
`probe` is the one place that goes over the network: `kdumpd check --target`, and
`kdumpd target-check`, which kdumpd-target-check.service runs for the daemon.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kdumpd import network, safefile

KNOWN_HOSTS = Path("/etc/kdumpd/known_hosts")
# A target that does not answer within these is unreachable: a check must end.
CONNECT_TIMEOUT_S = 10
PROBE_TIMEOUT_S = 60

# A user name as useradd(8) and ssh accept it without quoting.
_USER = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
# RFC 1123 host names: labels of letters, digits and hyphens.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_EXAMPLES = "ssh://USER@HOST[:PORT]/PATH or nfs://HOST/EXPORT[/SUBDIR]"


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port != 22 else ""
        return f"ssh://{self.user}@{host}{port}{self.path}"


@dataclass(frozen=True)
class NfsTarget:
    host: str
    path: str  # the export, or a folder in it: mount(8) takes either

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nfs://{host}{self.path}"


Target = SshTarget | NfsTarget


def _host(name: str | None, url: str) -> str:
    if not name:
        raise ValueError(f"{url!r} names no host ({_EXAMPLES})")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"{name!r} is not a host name or an IP address")
    return name.lower()


def _path(path: str, url: str) -> str:
    if not path.startswith("/") or path == "/":
        raise ValueError(f"{url!r} names no folder on the host ({_EXAMPLES})")
    if any(c.isspace() or c == "\0" for c in path) or "/../" in f"{path}/":
        raise ValueError(f"{path!r} is not a plain absolute path (no spaces, no '..')")
    return path.rstrip("/")


def parse(url: str) -> Target:
    """The target a URL names; ValueError saying what is wrong with it."""
    if any(c.isspace() or c == "\0" for c in url):
        raise ValueError(f"{url!r} contains white space or a NUL byte")
    parts = urlsplit(url)
    if parts.scheme not in ("ssh", "nfs"):
        raise ValueError(f"{url!r} is not a target URL: {_EXAMPLES}")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"{url!r}: a target URL has no '?' or '#' part")
    if parts.password is not None:
        raise ValueError(
            f"{parts.scheme}:// URLs carry no password: ssh logs in with the key in ssh_key"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535") from None
    host = _host(parts.hostname, url)
    path = _path(parts.path, url)
    if parts.scheme == "nfs":
        if parts.username is not None or port is not None:
            raise ValueError(f"{url!r}: an nfs:// target has no user and no port")
        return NfsTarget(host, path)
    if not parts.username or not _USER.fullmatch(parts.username):
        raise ValueError(f"{url!r} names no user, or not a plain one: ssh://USER@HOST/PATH")
    if port == 0:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535")
    return SshTarget(parts.username, host, port or 22, path)


def where_dumps_go(t: Target, route: network.Route | None, why_not: str, dump_path: str) -> str:
    """Where the armed crash kernel sends the dump: to the target, the way found before the
    crash, or to the local dump_path, and why."""
    if route is not None:
        return f"target {t.url}: a crash dump is sent there over {route}"
    return f"warning: target {t.url}: a crash dump is saved to {dump_path} instead: {why_not}"


def ssh_options(
    t: SshTarget, key: Path, known_hosts: Path = KNOWN_HOSTS, *, first_contact: bool = False
) -> list[str]:
    """ssh's options for a target: the key alone, never a prompt, the host known before.
    first_contact (kdumpd target-setup): ssh-copy-id logs in once with what the user types,
    and the host key is accepted and recorded, as ssh does when it meets a host."""
    return [
        "-p", str(t.port),
        "-o", f"IdentityFile={key}",
        "-o", f"BatchMode={'no' if first_contact else 'yes'}",
        "-o", "IdentitiesOnly=yes",
        "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
        "-o", "ServerAliveInterval=5",
        "-o", "ServerAliveCountMax=3",
        "-o", f"StrictHostKeyChecking={'accept-new' if first_contact else 'yes'}",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip


# What ssh (OpenSSH 9) and mount.nfs print when they cannot get in, and what to do.
_FAILURES = (
    ("Permission denied (", "permission denied: the host does not accept {key} for {user} "
     "(install it: kdumpd target-setup)"),
    ("Host key verification failed", "its host key is not the one in {known} "
     "(first contact: kdumpd target-setup)"),
    ("No ED25519 host key is known", "its host key is not in {known} (kdumpd target-setup)"),
    ("access denied by server", "the server does not export {path} to this machine"),
    ("Connection refused", "connection refused (no {service} server on port {port}?)"),
    ("timed out", "no answer within {timeout} s (down, or filtered?)"),
    ("No route to host", "no route to host"),
    ("Network is unreachable", "network is unreachable"),
    ("Could not resolve hostname", "its name does not resolve"),
    ("resolve address", "its name does not resolve"),
    ("need a /sbin/mount.<type> helper", "mount.nfs is not installed (Debian: nfs-common)"),
    ("mount.nfs: No such file or directory", "{path} is not there on the server"),
)  # fmt: skip


def failure(t: Target, key: Path, stderr: str, known_hosts: Path = KNOWN_HOSTS) -> str:
    """Why ssh or mount failed, from what it printed: for `kdumpd check --target`."""
    user, service, port = (t.user, "ssh", t.port) if isinstance(t, SshTarget) else ("", "NFS", 2049)
    for words, why in _FAILURES:
        if words in stderr:
            return why.format(
                key=key,
                user=user,
                known=known_hosts,
                path=t.path,
                service=service,
                port=port,
                timeout=CONNECT_TIMEOUT_S,
            )
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "it failed and said nothing"


# Run where the target is (ssh: on the server; nfs: here, the export mounted at $2 in a
# mount namespace of its own, gone with the process whatever happens): the folder is made
# if missing, a file can be created in it, and the free space is told (df -P: 1024-byte
# blocks, one line per file system).
_WRITABLE = (
    'mkdir -p -- {path} && f=$(mktemp -- {path}/.kdumpd-check.XXXXXX) && rm -f -- "$f" && '
    "df -Pk -- {path} | tail -n 1"
)
_NFS = (
    'mount -t nfs -o rw,soft,retry=0,timeo={deciseconds},retrans=1 -- "$1" "$2" && '
    + _WRITABLE.format(path='"$2"')
)


@dataclass(frozen=True)
class Verdict:
    """What a check found, as `kdumpd target-check` records it for the daemon."""

    url: str
    key: str  # the ssh key it logged in with ("" for nfs)
    ok: bool
    message: str  # "reachable, writable, N MiB free", or why not, naming the host
    time_usec: int = 0  # when the check began (CLOCK_REALTIME)
    route: network.Route | None = None  # how the host is reached; None when it is not
    no_route: str = ""  # why not

    def __str__(self) -> str:
        return f"target {self.url}: {self.message}"


def _key_used(t: Target, key: Path) -> str:
    return str(key) if isinstance(t, SshTarget) else ""


def _command(t: Target, key: Path, known_hosts: Path, mountpoint: str) -> list[str]:
    if isinstance(t, SshTarget):
        script = _WRITABLE.format(path=shlex.quote(t.path))
        return ["ssh", *ssh_options(t, key, known_hosts), f"{t.user}@{t.host}", "--", script]
    script = _NFS.format(deciseconds=CONNECT_TIMEOUT_S * 10)
    host = f"[{t.host}]" if ":" in t.host else t.host
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", script, "kdumpd-check", f"{host}:{t.path}", mountpoint,
    ]  # fmt: skip


def now_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_REALTIME) // 1000


def _printable(text: str) -> str:
    """What the server printed goes into LastError and the journal: no terminal escapes."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _run_bounded(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str] | None:
    """None if it did not end within `timeout`: then it and everything it started (ssh's
    children, mount.nfs under unshare's sh) are killed, in a session of their own."""
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as child:
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()  # not its pipes: a child stuck in the kernel may hold them
            return None
    return subprocess.CompletedProcess(argv, child.returncode, out, err)


def probe(t: Target, key: Path, known_hosts: Path = KNOWN_HOSTS) -> Verdict:
    """Is the target reachable and writable now? Bounded in time, whatever the network.
    ssh: with the key alone. nfs: mounted as root, where capture will mount it."""

    began = now_usec()
    try:
        route, no_route = network.find(t.host), ""
    except (network.NoRoute, OSError, ValueError) as e:
        route, no_route = None, str(e)

    def verdict(ok: bool, message: str) -> Verdict:
        return Verdict(t.url, _key_used(t, key), ok, _printable(message), began, route, no_route)

    import tempfile  # here: the daemon imports this module, and tempfile 0.6 MB with it

    with tempfile.TemporaryDirectory(prefix="kdumpd-check-") as mountpoint:
        argv = _command(t, key, known_hosts, mountpoint)
        try:
            done = _run_bounded(argv, PROBE_TIMEOUT_S)
        except FileNotFoundError:
            package = "openssh-client" if argv[0] == "ssh" else "util-linux"
            return verdict(False, f"{argv[0]} is not installed (Debian: {package})")
        if done is None:
            return verdict(False, f"{t.host}: no answer within {PROBE_TIMEOUT_S} s")
    fields = done.stdout.split()
    if done.returncode == 0 and len(fields) >= 4 and fields[3].isdigit():
        return verdict(True, f"reachable, writable, {int(fields[3]) >> 10} MiB free")
    # 255: ssh's own failure, not the command's; 32: mount(8)'s "mount failure".
    if done.returncode == (255 if isinstance(t, SshTarget) else 32):
        return verdict(False, f"{t.host}: {failure(t, key, done.stderr, known_hosts)}")
    said = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
    user = t.user if isinstance(t, SshTarget) else "root"
    return verdict(False, f"{t.host}: {t.path} is not writable for {user}: {said[0][:300]}")


# The daemon has no network (PrivateNetwork=yes): kdumpd-target-check.path starts the
# check in a unit of its own when the request file appears in the daemon's run directory
# (at each arming, and from the network hooks when an interface comes up); the verdict is
# written beside it, and the daemon's watcher hears of it.
RUN_DIR = Path("run/kdumpd")  # the daemon's, under the sysroot
CHECK_REQUEST = "target-check"
VERDICT = "target.json"
_VERDICT_LIMIT = 64 << 10


def record(verdict: Verdict, path: Path) -> None:
    """Whole or not at all: the daemon may read it at any moment."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(verdict)))
    tmp.rename(path)


def recall(path: Path, t: Target, key: Path | None) -> Verdict | None:
    """The last verdict on this target checked with this key (None: with any key, for the
    way to the host, which no key changes); None if there is none (not checked yet, or
    checked when the config named another target or key)."""
    try:
        found: Any = json.loads(safefile.read(path, _VERDICT_LIMIT, follow_symlinks=False))
        route = found.pop("route", None)
        verdict = Verdict(**found, route=None if route is None else network.Route.from_json(route))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    words = (verdict.url, verdict.key, verdict.message, verdict.no_route)
    if not all(type(w) is str for w in words) or type(verdict.ok) is not bool:
        return None
    if type(verdict.time_usec) is not int:
        return None
    if verdict.url != t.url or (key is not None and verdict.key != _key_used(t, key)):
        return None
    return verdict


def status_words(
    t: Target, key_problem: str, verdict: Verdict | None, asked_usec: int, going: str
) -> str:
    """The target's part of the daemon's LastError: what is wrong with it, or what the last
    check found (and whether one asked for at `asked_usec` is still to come), and where
    dumps go (`going`, where_dumps_go's)."""
    if key_problem:
        found = f"warning: {key_problem}"
    elif verdict is None:
        found = f"target {t.url}: not checked yet (kdumpd-target-check.service checks it)"
    else:
        found = str(verdict) if verdict.ok else f"warning: {verdict}"
        if verdict.time_usec < asked_usec:
            found += " (that was the last check; kdumpd-target-check.service checks it again)"
    return f"{found} {going}"
