"""Boot throwaway QEMU guests from the cached image and drive them through QMP and the agent.

Everything waits for events (console text, QMP events, agent replies) with deadlines and short
poll intervals; nothing sleeps for a fixed time hoping the guest got there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import random
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from .image import ImagePaths, locked

log = logging.getLogger("kdumpd.vm")

# TCG is slow and CI machines vary; one knob stretches every default timeout.
TIMEOUT_SCALE = float(os.environ.get("KDUMPD_VM_TIMEOUT_SCALE", "1"))
BOOT_TIMEOUT = 300.0 * TIMEOUT_SCALE
RUN_TIMEOUT = 120.0 * TIMEOUT_SCALE
CONSOLE_TAIL_LINES = 60
# TCG marks the TSC unstable and falls back to HPET, whose every read is an emulated MMIO
# access (no vDSO); TCG's TSC is host-clock derived and synchronised, so trust it.
BASE_APPEND = "console=ttyS0 root=/dev/vda rw tsc=reliable"
FILE_CHUNK = 256 * 1024  # raw bytes per guest-file-write/read; keeps each JSON message small


def _or_default(timeout: float | None, default: float) -> float:
    return default if timeout is None else timeout


class GuestError(RuntimeError):
    pass


class GuestTimeoutError(TimeoutError):
    """A wait ran out; the message carries the console tail so the cause is visible."""

    def __init__(self, what: str, console_tail: str) -> None:
        super().__init__(f"{what}\n--- last {CONSOLE_TAIL_LINES} console lines ---\n{console_tail}")


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str


class CommandFailed(GuestError):
    def __init__(self, cmd: Sequence[str], result: Result) -> None:
        self.cmd = list(cmd)
        self.result = result
        super().__init__(
            f"guest command failed (rc={result.rc}): {shlex.join(cmd)}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )


class _Deadline:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.end = time.monotonic() + timeout

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end


class _JsonLineSocket:
    """A unix stream socket carrying newline-terminated JSON (QMP and the guest agent both do)."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_json(self, obj: Mapping[str, Any]) -> None:
        self.send(json.dumps(obj).encode() + b"\n")

    def read_line(self, deadline: _Deadline) -> bytes | None:
        """Next line, or None when the deadline passes first."""
        while b"\n" not in self.buf:
            left = deadline.left()
            if left <= 0:
                return None
            self.sock.settimeout(min(left, 1.0))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError("peer closed the socket")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def read_json(self, deadline: _Deadline) -> dict[str, Any] | None:
        while (line := self.read_line(deadline)) is not None:
            # The agent prefixes sync replies with 0xFF and may emit junk after a guest reboot.
            text = line.replace(b"\xff", b"").strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                log.debug("dropping non-JSON line %r", text[:200])
                continue
            if isinstance(obj, dict):
                return obj
        return None

    def close(self) -> None:
        self.sock.close()


class Qmp:
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.conn = _JsonLineSocket(path, timeout)
        self.events: list[dict[str, Any]] = []
        greeting = self.conn.read_json(_Deadline(timeout))
        if greeting is None or "QMP" not in greeting:
            raise GuestError(f"no QMP greeting: {greeting!r}")
        self.command("qmp_capabilities")

    def command(
        self, name: str, args: Mapping[str, Any] | None = None, timeout: float = 30.0
    ) -> Any:
        msg: dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = dict(args)
        self.conn.send_json(msg)
        deadline = _Deadline(timeout)
        while (reply := self.conn.read_json(deadline)) is not None:
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise GuestError(f"QMP {name} failed: {reply['error']}")
            elif "return" in reply:
                return reply["return"]
        raise TimeoutError(f"QMP {name}: no reply within {timeout}s")

    def wait_event(self, name: str, deadline: _Deadline) -> dict[str, Any] | None:
        """Consume and return the oldest unconsumed event called ``name``."""
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("event") == name:
                    return self.events.pop(i)
            msg = self.conn.read_json(deadline)
            if msg is None:
                return None
            if "event" in msg:
                self.events.append(msg)

    def close(self) -> None:
        self.conn.close()


class Agent:
    """qemu-guest-agent client.  The stream survives guest reboots, so every (re)connect starts
    with guest-sync-delimited and a fresh random id to skip stale replies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: _JsonLineSocket | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def sync(self, deadline: _Deadline, attempt_timeout: float = 1.0) -> None:
        self.close()
        self.conn = _JsonLineSocket(self.path, 5.0)
        while not deadline.expired():
            sync_id = random.randrange(1, 2**31)
            # 0xFF resets the agent's JSON parser in case a previous request was cut short.
            self.conn.send(b"\xff")
            self.conn.send_json({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}})
            attempt = _Deadline(min(attempt_timeout, deadline.left()))
            while (reply := self.conn.read_json(attempt)) is not None:
                if reply.get("return") == sync_id:
                    return
        raise TimeoutError("guest agent did not answer guest-sync-delimited")

    def call(self, name: str, args: Mapping[str, Any] | None = None, timeout: float = 30.0) -> Any:
        if self.conn is None:
            raise GuestError("guest agent not connected (call wait_booted first)")
        msg: dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = dict(args)
        self.conn.send_json(msg)
        reply = self.conn.read_json(_Deadline(timeout))
        if reply is None:
            self.close()  # a late reply must not be taken for the next request's
            raise TimeoutError(f"guest agent: no reply to {name} within {timeout}s")
        if "error" in reply:
            raise GuestError(f"guest agent {name} failed: {reply['error']}")
        return reply.get("return")

    def send_only(self, name: str, args: Mapping[str, Any] | None = None) -> None:
        """Send a request whose reply will never come (the guest is about to go away)."""
        if self.conn is None:
            raise GuestError("guest agent not connected")
        self.conn.send_json({"execute": name, "arguments": dict(args or {})})
        self.close()


SYSRQ_CRASH = ("/bin/sh", "-c", "echo c > /proc/sysrq-trigger")


@dataclass
class BootOptions:
    memory_mb: int = 1024
    cpus: int = 2
    maxcpus: int | None = None  # > cpus leaves room for CPU hotplug via device_add
    append: str = ""  # extra kernel command line, e.g. "crashkernel=256M"
    reboot: bool = True  # False: a guest reboot makes QEMU exit (-no-reboot)
    extra_qemu_args: list[str] = field(default_factory=list)


class Guest:
    def __init__(
        self,
        image: ImagePaths,
        workdir: Path,
        name: str = "guest",
        options: BootOptions | None = None,
    ) -> None:
        self.image = image
        self.name = name
        self.options = options or BootOptions()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.overlay = workdir / "overlay.qcow2"
        self.console_log = workdir / "console.log"
        self.qemu_log = workdir / "qemu.log"
        # Unix socket paths are limited to 108 bytes; pytest tmp dirs can exceed that.
        self.sockdir = Path(tempfile.mkdtemp(prefix="kdvm-"))
        self.qmp_path = self.sockdir / "qmp.sock"
        self.qga_path = self.sockdir / "qga.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self._qmp: Qmp | None = None
        self.agent = Agent(self.qga_path)
        self._raw: Path | None = None
        self.timings: dict[str, float] = {}
        self._started_at = 0.0

    # -- lifecycle -----------------------------------------------------------------------------

    def _qemu_argv(self) -> list[str]:
        o = self.options
        accel = os.environ.get("KDUMPD_VM_ACCEL", "tcg")
        smp = f"cpus={o.cpus}" + (f",maxcpus={o.maxcpus}" if o.maxcpus else "")
        append = " ".join([BASE_APPEND, o.append]).strip()
        argv = [
            "qemu-system-x86_64",
            "-name",
            self.name,
            "-accel",
            accel,
            "-m",
            str(o.memory_mb),
            "-smp",
            smp,
            # No default VGA/CD-ROM/NIC/monitor: nothing for the guest to probe or drive;
            # -nodefaults alone still leaves the pc machine's VGA (bochs-drm would load).
            "-nodefaults",
            "-vga",
            "none",
            "-nographic",
            "-monitor",
            "none",
            "-nic",
            "none",
            "-kernel",
            str(self.image.kernel),
            "-initrd",
            str(self.image.initrd),
            "-append",
            append,
            "-drive",
            f"file={self.overlay},format=qcow2,if=virtio",
            "-chardev",
            f"file,id=con0,path={self.console_log},append=on",
            "-serial",
            "chardev:con0",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
            "-device",
            "virtio-serial-pci,id=vser0",
            "-chardev",
            f"socket,path={self.qga_path},server=on,wait=off,id=qga0",
            "-device",
            "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
            # Seeds the guest's RNG at once, so nothing early in boot waits for entropy.
            "-device",
            "virtio-rng-pci",
            "-S",  # start paused: QMP is connected before the first instruction, no missed events
        ]
        if not o.reboot:
            argv.append("-no-reboot")
        return argv + list(o.extra_qemu_args)

    def start(self, timeout: float = 60.0) -> None:
        """Launch QEMU (re-using the overlay if this guest ran before) and let the CPUs run."""
        if self.running():
            raise GuestError(f"{self.name} is already running")
        if not self.overlay.exists():
            subprocess.run(
                [
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "qcow2" if self.image.disk.suffix == ".qcow2" else "raw",
                    "-b",
                    str(self.image.disk),
                    str(self.overlay),
                ],
                check=True,
            )
        self._raw = None
        argv = self._qemu_argv()
        with self.qemu_log.open("ab") as qlog:
            qlog.write(f"$ {shlex.join(argv)}\n".encode())
            qlog.flush()
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog, start_new_session=True
            )
        deadline = _Deadline(timeout)
        self._poll(
            lambda: self.qmp_path.exists() and self.qga_path.exists(),
            deadline,
            "QEMU did not create its sockets",
        )
        self._qmp = Qmp(self.qmp_path)
        self._started_at = time.monotonic()
        self._qmp.command("cont")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_booted(self, timeout: float | None = None) -> str:
        """Wait until the agent answers and systemd finished booting; returns the system state.

        Works again after the guest rebooted (or a crash kernel came up) on its own."""
        deadline = _Deadline(_or_default(timeout, BOOT_TIMEOUT))
        t0 = time.monotonic()
        while True:
            self._check_alive("waiting for the guest agent")
            try:
                self.agent.sync(_Deadline(min(5.0, deadline.left())))
                break
            except (TimeoutError, ConnectionError, OSError) as exc:
                if deadline.expired():
                    raise self._timeout(
                        f"guest agent not answering after {deadline.timeout:.0f}s ({exc})"
                    ) from None
        self.timings["agent"] = time.monotonic() - t0
        res = self.run(
            ["systemctl", "is-system-running", "--wait"],
            check=False,
            timeout=max(deadline.left(), 1.0),
        )
        state = res.stdout.strip()
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"], check=False)
            log.warning("%s: boot degraded; failed units:\n%s", self.name, failed.stdout)
        elif state != "running":
            raise GuestError(f"{self.name}: system state {state!r} after boot\n{res.stderr}")
        self.timings["booted"] = time.monotonic() - t0
        if self._started_at:  # first boot after start(): QEMU launch to booted
            self.timings["since_start"] = time.monotonic() - self._started_at
            self._started_at = 0.0
        return state

    def shutdown(self, timeout: float = 120.0) -> None:
        """Power off through the agent and wait for QEMU to exit; kill it if it does not."""
        if not self.running():
            return
        try:
            # guest-shutdown never replies on success.
            self.agent.send_only("guest-shutdown", {"mode": "powerdown"})
        except (GuestError, OSError) as exc:
            log.warning("%s: guest-shutdown failed (%s); killing", self.name, exc)
            self.kill()
            return
        try:
            self.wait_exit(timeout)
        except GuestTimeoutError:
            log.warning("%s: no poweroff within %ss; killing", self.name, timeout)
            self.kill()

    def reboot(self) -> int:
        """Ask the guest to reboot; returns the console offset to wait for the next boot from."""
        offset = self.console_offset()
        self.agent.send_only("guest-shutdown", {"mode": "reboot"})
        return offset

    def wait_exit(self, timeout: float = 120.0) -> int:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise self._timeout(f"QEMU still running after {timeout}s") from None
        self._disconnect()
        return rc

    def kill(self) -> None:
        """Stop QEMU now.  'quit' first so the qcow2 overlay is closed cleanly; SIGKILL last."""
        if self.proc is None:
            return
        if self.proc.poll() is None and self._qmp is not None:
            try:
                self._qmp.command("quit", timeout=5)
            except (GuestError, OSError, TimeoutError) as exc:
                log.debug("QMP quit: %s", exc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._disconnect()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _disconnect(self) -> None:
        self.agent.close()
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None

    # -- commands ------------------------------------------------------------------------------

    def run(
        self,
        cmd: str | Sequence[str],
        check: bool = True,
        timeout: float | None = None,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
    ) -> Result:
        """Run a command in the guest via guest-exec; a string goes through /bin/sh -c."""
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if user is not None and user != "root":
            argv = ["runuser", "-u", user, "--", *argv]
        args: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if env is not None:
            # guest-exec replaces the whole environment, so keep a usable PATH.
            merged = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
            merged.update(env)
            args["env"] = [f"{k}={v}" for k, v in merged.items()]
        if input is not None:
            args["input-data"] = base64.b64encode(input).decode()
        deadline = _Deadline(_or_default(timeout, RUN_TIMEOUT))
        pid = self.agent.call("guest-exec", args)["pid"]
        interval = 0.01
        while True:
            st = self.agent.call("guest-exec-status", {"pid": pid})
            if st["exited"]:
                break
            if deadline.expired():
                # Best effort: don't leave the command running behind the next test step.
                self.agent.call("guest-exec", {"path": "kill", "arg": ["-KILL", str(pid)]})
                raise self._timeout(
                    f"guest command still running after {deadline.timeout:.0f}s: {shlex.join(argv)}"
                )
            time.sleep(interval)  # poll interval, not a wait for an outcome
            interval = min(interval * 2, 0.2)
        rc = st["exitcode"] if "exitcode" in st else -int(st.get("signal", 0))
        res = Result(
            rc=rc,
            stdout=base64.b64decode(st.get("out-data", "")).decode(errors="replace"),
            stderr=base64.b64decode(st.get("err-data", "")).decode(errors="replace"),
        )
        if check and rc != 0:
            raise CommandFailed(argv, res)
        return res

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        handle = self.agent.call("guest-file-open", {"path": path, "mode": "wb"})
        try:
            for i in range(0, len(data), FILE_CHUNK):
                chunk = base64.b64encode(data[i : i + FILE_CHUNK]).decode()
                self.agent.call("guest-file-write", {"handle": handle, "buf-b64": chunk})
        finally:
            self.agent.call("guest-file-close", {"handle": handle})
        # guest-file-open creates with the agent's umask; set the mode asked for explicitly.
        self.run(["chmod", f"{mode:o}", path])

    def read_file(self, path: str) -> bytes:
        handle = self.agent.call("guest-file-open", {"path": path, "mode": "rb"})
        parts: list[bytes] = []
        try:
            while True:
                r = self.agent.call("guest-file-read", {"handle": handle, "count": FILE_CHUNK})
                parts.append(base64.b64decode(r["buf-b64"]))
                if r["eof"] or r["count"] == 0:
                    break
        finally:
            self.agent.call("guest-file-close", {"handle": handle})
        return b"".join(parts)

    def copy_in(self, host_path: Path, guest_path: str) -> None:
        self.write_file(guest_path, host_path.read_bytes(), host_path.stat().st_mode & 0o7777)

    def install_deb(self, host_deb: Path, timeout: float | None = None) -> str:
        """Install a .deb offline; returns "apt" or "dpkg" (the fallback) for the record.

        No --no-download: bookworm's apt 2.6 then fails on any local .deb with "E: Internal
        Error, Pathname to install is not absolute".  Offline all the same: the guest has no
        network and no apt sources, so every dependency must already be installed."""
        target = f"/tmp/{host_deb.name}"
        self.copy_in(host_deb, target)
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        apt = self.run(
            ["apt-get", "install", "-y", target],
            check=False,
            timeout=timeout,
            env=env,
        )
        if apt.rc == 0:
            return "apt"
        out = apt.stdout + apt.stderr
        if re.search(r"unmet dependencies|Depends:|not installable|broken packages", out, re.I):
            raise CommandFailed(["apt-get", "install", target], apt)
        log.warning(
            "%s: apt-get refused %s (rc=%d), falling back to dpkg -i:\n%s",
            self.name,
            host_deb.name,
            apt.rc,
            out,
        )
        self.run(["dpkg", "-i", target], timeout=timeout, env=env)
        return "dpkg"

    def crash(self, command: Sequence[str] = SYSRQ_CRASH) -> int:
        """Panic the guest kernel (by default via sysrq; `command` may be one that ends in
        a panic, such as `kdumpd test --yes`); returns the console offset from before.

        Fire-and-forget: the agent dies with the kernel, so no exec status is awaited."""
        offset = self.console_offset()
        self.agent.send_only("guest-exec", {"path": command[0], "arg": list(command[1:])})
        return offset

    # -- console -------------------------------------------------------------------------------

    def console_offset(self) -> int:
        try:
            return self.console_log.stat().st_size
        except FileNotFoundError:
            return 0

    def _console_bytes(self, start_offset: int = 0) -> bytes:
        try:
            with self.console_log.open("rb") as f:
                f.seek(start_offset)
                return f.read()
        except FileNotFoundError:
            return b""

    def console_text(self, start_offset: int = 0) -> str:
        return self._console_bytes(start_offset).decode(errors="replace")

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])

    def wait_console(
        self, pattern: str | re.Pattern[str], timeout: float = BOOT_TIMEOUT, start_offset: int = 0
    ) -> re.Match[str]:
        """Wait for ``pattern`` on the serial console after byte ``start_offset``.

        The text is matched as Latin-1, so ``start_offset + match.end()`` is again a byte
        offset (the console carries some UTF-8, e.g. systemd's ellipses)."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = _Deadline(timeout)
        found: re.Match[str] | None = None

        def probe() -> bool:
            nonlocal found
            found = rx.search(self._console_bytes(start_offset).decode("latin-1"))
            return found is not None

        self._poll(probe, deadline, f"console never showed {rx.pattern!r}", check_alive=True)
        assert found is not None
        return found

    # -- QMP -----------------------------------------------------------------------------------

    def qmp(self, cmd: str, args: Mapping[str, Any] | None = None, timeout: float = 30.0) -> Any:
        if self._qmp is None:
            raise GuestError(f"{self.name}: QEMU not running")
        return self._qmp.command(cmd, args, timeout)

    def wait_qmp_event(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Oldest not-yet-consumed QMP event ``name`` since start (events are queued)."""
        if self._qmp is None:
            raise GuestError(f"{self.name}: QEMU not running")
        try:
            ev = self._qmp.wait_event(name, _Deadline(timeout))
        except ConnectionError:
            ev = None
        if ev is None:
            raise self._timeout(f"no QMP event {name} within {timeout}s")
        return ev

    # -- disk inspection -----------------------------------------------------------------------

    def raw_disk(self) -> Path:
        """The guest disk as a raw ext4 image (guest must be stopped), journal replayed."""
        if self.running():
            raise GuestError("raw_disk() needs the guest stopped (shutdown() or kill() first)")
        if self._raw is None:
            raw = self.workdir / "disk.raw"
            subprocess.run(
                ["qemu-img", "convert", "-O", "raw", str(self.overlay), str(raw)], check=True
            )
            # debugfs does not replay the journal; after a crash or kill the newest files may
            # only be in it.  e2fsck exit 1 means "fixed", which is what we asked for.
            fsck = subprocess.run(
                ["e2fsck", "-y", "-E", "journal_only", str(raw)],
                capture_output=True,
                text=True,
                check=False,
            )
            if fsck.returncode not in (0, 1):
                raise GuestError(
                    f"e2fsck journal replay failed ({fsck.returncode}):\n{fsck.stdout}{fsck.stderr}"
                )
            self._raw = raw
        return self._raw

    def _debugfs(self, request: str) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            ["debugfs", "-R", request, str(self.raw_disk())], capture_output=True, check=False
        )
        # debugfs exits 0 even when the path is missing; its stderr says so.
        err = proc.stderr.decode(errors="replace")
        if proc.returncode != 0 or re.search(r"not found|Could not|error", err, re.I):
            raise GuestError(f"debugfs -R {request!r} failed: {err.strip()}")
        return proc

    def debugfs_ls(self, path: str) -> list[str]:
        out = self._debugfs(f"ls -p {path}").stdout.decode(errors="replace")
        names = []
        for line in out.splitlines():
            # "-p" lines look like /inode/mode/uid/gid/name/size/
            fields = line.strip().split("/")
            if len(fields) >= 7 and fields[5] not in (".", ".."):
                names.append(fields[5])
        return names

    def debugfs_cat(self, path: str) -> bytes:
        with tempfile.TemporaryDirectory() as td:
            out = Path(td) / "f"
            self._debugfs(f"dump {path} {out}")
            return out.read_bytes()

    # -- helpers -------------------------------------------------------------------------------

    def _check_alive(self, what: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            qlog = self.qemu_log.read_text(errors="replace")[-2000:]
            raise GuestError(
                f"{self.name}: QEMU exited (rc={self.proc.returncode}) while {what}\n"
                f"--- qemu.log ---\n{qlog}\n--- console ---\n{self.console_tail()}"
            )

    def _poll(
        self,
        cond: Callable[[], bool],
        deadline: _Deadline,
        what: str,
        check_alive: bool = True,
        interval: float = 0.05,
    ) -> None:
        while not cond():
            if check_alive:
                self._check_alive(what)
            if deadline.expired():
                raise self._timeout(f"{what} (after {deadline.timeout:.0f}s)")
            time.sleep(interval)  # poll interval between checks of an event

    def _timeout(self, what: str) -> GuestTimeoutError:
        return GuestTimeoutError(f"{self.name}: {what}", self.console_tail())


class GuestFactory(Protocol):
    """What the ``make_guest`` fixture hands to tests."""

    def __call__(
        self,
        *,
        memory_mb: int = ...,
        cpus: int = ...,
        maxcpus: int | None = ...,
        append: str = ...,
        reboot: bool = ...,
        boot: bool = ...,
        boot_timeout: float | None = ...,
        extra_qemu_args: list[str] | None = ...,
        image: ImagePaths | None = ...,
    ) -> Guest: ...


def derived_image(
    base: ImagePaths,
    name: str,
    prepare: Callable[[Guest], tuple[str, str]],
    mktemp: Callable[[str], Path],
) -> ImagePaths:
    """An image made once from `base` by `prepare` in a guest (which returns the guest paths
    of the kernel and initrd to boot), cached beside it as `name`, which must name its
    inputs: a qcow2 over the base disk, and the kernel and initrd. `mktemp` makes a scratch
    folder (pytest's tmp_path_factory.mktemp)."""
    cached = base.disk.parent / name
    paths = ImagePaths(
        disk=cached / "disk.qcow2", kernel=cached / "vmlinuz", initrd=cached / "initrd.img"
    )
    with locked(base.disk.parent / f".{name}.lock"):
        if cached.is_dir():
            return paths
        work = mktemp(name)
        with Guest(base, work / "guest", "imagebuild") as g:
            g.start()
            g.wait_booted()
            kernel, initrd = prepare(g)
            g.shutdown()
            build = work / "image"
            build.mkdir()
            (build / "vmlinuz").write_bytes(g.debugfs_cat(kernel))
            (build / "initrd.img").write_bytes(g.debugfs_cat(initrd))
            shutil.move(g.overlay, build / "disk.qcow2")
        partial = cached.parent / f".{cached.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
        shutil.copytree(build, partial)
        os.rename(partial, cached)  # complete or absent
    return paths
