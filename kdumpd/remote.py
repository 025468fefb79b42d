"""Sending a dump to a target from the crash kernel (capture.py's other way to save it):
over ssh (Ssh), or into an NFS export that stage two has mounted (Nfs).

On the server the dump goes to PATH/<machine>/<folder>/, <machine> being this machine's
hostname and short machine-id (environment.machine_name), so a fleet's dumps never
collide. Over ssh, makedumpfile writes its flattened format (-F) to ssh, which writes it to
vmcore.incomplete; only once makedumpfile and ssh both ended well is it renamed vmcore.
The flattened file is what the server keeps: `makedumpfile -R vmcore.flat < vmcore` makes
it an ordinary dump again (crash reads the flattened form too). One ssh connection is made
and shared by the few commands (ControlMaster), so the handshake is paid once.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdumpd import dumps, safefile, target

CONTROL = Path("/run/kdumpd/ssh-control")  # the shared connection's socket (a tmpfs)
COMMAND_TIMEOUT_S = 120
_DUMP_FOLDER = re.compile(r"\d{4}-\d\d-\d\d-\d{6}-.+")  # capture.folder_name's


class SendError(Exception):
    pass


def host_name(host: str, address: str) -> str:
    """The host for messages: as configured, and the address if that is another."""
    return host if host == address else f"{host} ({address})"


def oldest(names: list[str], keep: int) -> list[str]:
    """Dump folders to remove on the server so that, with the new one, `keep` remain."""
    folders = sorted(n for n in names if _DUMP_FOLDER.fullmatch(n))
    return folders[: max(0, len(folders) - keep + 1)] if keep > 0 else []


@dataclass(frozen=True)
class Ssh:
    target: target.SshTarget  # as configured: its host name is the host key's
    address: str  # the host's address, found before the crash (no DNS here)
    key: Path
    known_hosts: Path
    machine: str
    program: str = "ssh"
    control: Path = CONTROL

    @property
    def host_key_name(self) -> str:
        """The name the host key is known by: the configured one, as ssh records it on
        first contact ([host]:port for a port other than 22); ssh connects to the address."""
        t = self.target
        return t.host if t.port == 22 else f"[{t.host}]:{t.port}"

    def _options(self) -> list[str]:
        return [
            *target.ssh_options(self.target, self.key, self.known_hosts),
            "-o", f"HostKeyAlias={self.host_key_name}",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self.control}",
            "-o", "ControlPersist=120",
        ]  # fmt: skip

    def _argv(self, script: str) -> list[str]:
        return [self.program, *self._options(), f"{self.target.user}@{self.address}", "--", script]

    @property
    def name(self) -> str:
        return host_name(self.target.host, self.address)

    def folder(self, name: str) -> str:
        return f"{self.target.path}/{self.machine}/{name}"

    def location(self, name: str) -> str:
        t = self.target
        return target.SshTarget(t.user, t.host, t.port, self.folder(name)).url

    def _failed(self, stderr: str, returncode: int) -> SendError:
        if returncode == 255:  # ssh's own failure: say it as the check does
            why = target.failure(self.target, self.key, stderr, self.known_hosts)
        else:
            lines = [line for line in stderr.splitlines() if line.strip()]
            why = lines[-1][:300] if lines else f"exit status {returncode}"
        return SendError(f"{self.name}: {why}")

    def run(self, script: str, data: bytes = b"") -> str:
        """Run a shell command on the server; what it printed, or SendError."""
        try:
            done = subprocess.run(
                self._argv(script), input=data, capture_output=True, timeout=COMMAND_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise SendError(f"{self.name}: no answer within {COMMAND_TIMEOUT_S} s") from None
        if done.returncode != 0:
            raise self._failed(done.stderr.decode(errors="replace"), done.returncode)
        return done.stdout.decode(errors="replace")

    def prepare(self, name: str, keep: int, say: Callable[[str], None]) -> int:
        """Make the dump's folder, remove the oldest dumps beyond keep_dumps; the bytes
        free there."""
        base = shlex.quote(f"{self.target.path}/{self.machine}")
        listed = self.run(f"mkdir -p -- {base} && ls -1 -- {base}").split("\n")
        victims = oldest(listed, keep)
        for victim in victims:
            say(f"removing old dump {self.location(victim)} (keep_dumps: {keep})")
        remove = " ".join(shlex.quote(f"{self.target.path}/{self.machine}/{v}") for v in victims)
        here = shlex.quote(self.folder(name))
        df = self.run(f"{f'rm -rf -- {remove} && ' if remove else ''}mkdir -- {here} && "
                      f"df -Pk -- {here} | tail -n 1").split()  # fmt: skip
        if len(df) < 4 or not df[3].isdigit():
            raise SendError(f"{self.name}: df said {' '.join(df)!r}")
        return int(df[3]) * 1024

    def stream(self, name: str) -> subprocess.Popen[bytes]:
        """ssh writing its standard input to the folder's vmcore.incomplete."""
        incomplete = shlex.quote(f"{self.folder(name)}/{dumps.INCOMPLETE}")
        return subprocess.Popen(
            self._argv(f"cat > {incomplete}"), stdin=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def stream_failure(self, proc: subprocess.Popen[bytes]) -> SendError | None:
        """Wait for the stream's ssh; why it failed, or None."""
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode(errors="replace")
        returncode = proc.wait()
        return self._failed(stderr, returncode) if returncode != 0 else None

    def complete(self, name: str) -> int:
        """vmcore.incomplete renamed vmcore (both ends said it is all there); its size."""
        folder = shlex.quote(self.folder(name))
        size = self.run(
            f"cd -- {folder} && mv -- {dumps.INCOMPLETE} {dumps.VMCORE} && wc -c < {dumps.VMCORE}"
        ).strip()
        if not size.isdigit():
            raise SendError(f"{self.name}: wc said {size!r}")
        return int(size)

    def put(self, name: str, file: str, data: bytes) -> None:
        self.run(f"cat > {shlex.quote(f'{self.folder(name)}/{file}')}", data)

    def close(self) -> None:
        destination = f"{self.target.user}@{self.address}"
        subprocess.run(
            [self.program, *self._options(), "-O", "exit", destination],
            capture_output=True,
            timeout=10,
        )


@dataclass(frozen=True)
class Nfs:
    """The export mounted at `mountpoint` (init.mount_export): the dump is written there as
    on a local file system, makedumpfile's own format, vmcore.incomplete renamed vmcore."""

    target: target.NfsTarget
    address: str  # the host's, found before the crash
    machine: str
    mountpoint: Path
    mounted: Callable[[Path], bool] = os.path.ismount

    @property
    def name(self) -> str:
        return host_name(self.target.host, self.address)

    def folder(self, name: str) -> Path:
        return self.mountpoint / self.machine / name

    def location(self, name: str) -> str:
        return target.NfsTarget(self.target.host, f"{self.target.path}/{self.machine}/{name}").url

    def _failed(self, e: OSError) -> SendError:
        return SendError(f"{self.name}:{self.target.path}: {e.strerror or e}")

    def prepare(self, name: str, keep: int, say: Callable[[str], None]) -> int:
        """As Ssh.prepare: the folder made, the oldest dumps beyond keep_dumps removed; the
        bytes free there."""
        base = self.mountpoint / self.machine
        if not self.mounted(self.mountpoint):  # else the dump would fill the crash kernel's RAM
            raise SendError(f"{self.name}: {self.target.path} is not mounted")
        try:
            base.mkdir(parents=True, exist_ok=True)
            for victim in oldest(os.listdir(base), keep):
                say(f"removing old dump {self.location(victim)} (keep_dumps: {keep})")
                shutil.rmtree(base / victim, ignore_errors=True)
            self.folder(name).mkdir()
            stat = os.statvfs(self.folder(name))
        except OSError as e:
            raise self._failed(e) from None
        return stat.f_bavail * stat.f_frsize

    def put(self, name: str, file: str, data: bytes) -> None:
        try:
            safefile.write_durably(self.folder(name) / file, data)
        except OSError as e:
            raise self._failed(e) from None

    def close(self) -> None:
        """Nothing to close: the export stays mounted until the reboot (synced before)."""


Sender = Ssh | Nfs
