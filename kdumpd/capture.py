"""`kdumpd capture`: runs in the crash kernel, saves /proc/vmcore with makedumpfile, then
takes the final action.

The dump is written as vmcore.incomplete and renamed to vmcore only once it is complete
and synced, so a file named vmcore is always a whole dump.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kdumpd import (
    config,
    crashtest,
    dumps,
    journal,
    network,
    remote,
    reservation,
    safefile,
    skew,
    vmcore,
)
from kdumpd.sizes import human_size

VMCORE = Path("/proc/vmcore")
# Dumps already announced, under the sysroot (StateDirectory=kdumpd in the unit).
ANNOUNCED = Path("var/lib/kdumpd/announced-dumps")
COMPRESSION_FLAGS = {"lzo": "-l", "zstd": "-z", "zlib": "-c", "none": ""}
ACTION_COMMANDS = {
    # --force: skip stopping services (there are none worth stopping here) but still
    # unmount or remount file systems read-only, so the dump is safe on disk.
    "reboot": ["systemctl", "--force", "reboot"],
    "poweroff": ["systemctl", "--force", "poweroff"],
    "halt": ["systemctl", "--force", "halt"],
    "shell": ["systemctl", "--no-block", "isolate", "emergency.target"],
}


class CaptureError(Exception):
    pass


def say(message: str) -> None:
    """Progress on the console, where whoever watches the crashed machine looks."""
    print(f"kdumpd: {message}", flush=True)


def folder_name(when: float, kernel_version: str) -> str:
    return time.strftime("%Y-%m-%d-%H%M%S", time.gmtime(when)) + f"-{kernel_version}"


def retention_victims(existing: list[dumps.Dump], keep: int) -> list[Path]:
    """Oldest dumps to delete so that, with the new one, at most `keep` remain (0: keep all)."""
    if keep <= 0 or len(existing) < keep:
        return []
    ordered = sorted(existing, key=lambda d: (d.time_usec, d.path.name))
    return [d.path for d in ordered[: len(existing) - keep + 1]]


def check_space(free_bytes: int, minimum: int, path: Path | str) -> None:
    if free_bytes < minimum:
        raise CaptureError(
            f"only {human_size(free_bytes)} free on {path}, below min_free_space "
            f"({human_size(minimum)}); no dump written"
        )


# makedumpfile's progress lines: "Copying data   : [ 34.2 %] /   eta: 3s".
_PROGRESS = re.compile(r": \[ *[0-9.]+ %\]")
# At most one progress line per this many seconds on the console: makedumpfile prints one
# per step and per cycle, thousands on a big machine, and the serial console is slow.
PROGRESS_EVERY = 5.0


class ProgressFilter:
    """Which of makedumpfile's output lines reach the console."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._shown = -PROGRESS_EVERY

    def show(self, line: str) -> bool:
        if not _PROGRESS.search(line):
            return True
        now = self._clock()
        if now - self._shown < PROGRESS_EVERY:
            return False
        self._shown = now
        return True


def run_makedumpfile(command: list[str], into: IO[bytes] | None = None) -> tuple[int, list[str]]:
    """Run makedumpfile with its messages on the console as they come (errors go to its
    stdout, progress to stderr: both are read; with -F the dump goes to stdout, `into`, and
    the messages all to stderr). Returns the exit status and the lines that are not
    progress."""
    shown = ProgressFilter()
    messages = []
    with subprocess.Popen(
        command,
        stdout=into or subprocess.PIPE,
        stderr=subprocess.PIPE if into else subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        said = proc.stderr if into else proc.stdout
        assert said is not None
        for raw in said:  # universal newlines: progress redrawn with \r splits too
            line = raw.strip()
            if not line:
                continue
            if not _PROGRESS.search(line):
                messages.append(line)
            if shown.show(line):
                print(line, flush=True)
    return proc.returncode, messages


def makedumpfile_command(
    cfg: config.Config, source: Path, target: Path | None, supported: set[str], cpus: int = 1
) -> tuple[list[str], str]:
    """The makedumpfile command line (target None: the flattened format on stdout, -F,
    for sending), and the compression actually used: a makedumpfile
    built without the configured one (Debian 12's lacks zstd) falls back to lzo, then zlib.
    With more than one CPU, one thread per CPU reads and compresses pages (the main thread
    writes); not for ELF output (-E), which makedumpfile writes with one thread only, nor
    when makedumpfile_args chooses its own --num-threads."""
    compression = cfg.compression
    args = cfg.makedumpfile_args
    threaded = cpus > 1 and not any(
        a.startswith("--num-threads") or (a[:1] == "-" and a[1:2] != "-" and "E" in a) for a in args
    )
    if compression not in supported:
        compression = next((c for c in ("lzo", "zlib") if c in supported), "none")
    flag = COMPRESSION_FLAGS[compression]
    command = [
        "makedumpfile",
        *([flag] if flag else []),
        "-d",
        str(cfg.dump_level),
        "--message-level",
        "7",
        *(["--num-threads", str(cpus)] if threaded else []),
        *args,
        *(["-F", str(source)] if target is None else [str(source), str(target)]),
    ]
    return command, compression


def supported_compressions(version_output: str) -> set[str]:
    """From `makedumpfile -v`: 'lzo\tenabled', 'zstd\tdisabled', ... (zlib is always built in)."""
    found = {"zlib", "none"}
    for line in version_output.splitlines():
        words = line.split()
        if len(words) == 2 and words[1] == "enabled" and words[0] in COMPRESSION_FLAGS:
            found.add(words[0])
    return found


def metadata(
    *,
    started: float,
    finished: float,
    kernel_version: str,
    panic: str,
    cfg: config.Config,
    compression: str,
    size: int,
    error: str,
    location: str = "",
) -> dict[str, Any]:
    """metadata.json: beside the dump, and for a dump sent to a target also on the local
    disk, where `location` (its URL) says where it went."""
    return {
        **({"location": location} if location else {}),
        "time_usec": int(started * 1_000_000),
        "kernel_version": kernel_version,
        "panic_message": panic,
        "dump_level": cfg.dump_level,
        "compression": compression,
        "size_bytes": size,
        "duration_s": round(finished - started, 3),
        "complete": not error,
        "error": error,
    }


def mounts_needed(dump_path: Path, fstab: str, mounted: set[str]) -> list[str]:
    """fstab mount points on the way to dump_path that are not mounted yet, outermost first.

    local-fs.target does not wait for `nofail` or `noauto` entries, so the capture kernel may
    reach us before the dump file system is there; writing to the root file system beneath it
    instead would fill the wrong disk."""
    points = []
    for line in fstab.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0].startswith("#") or not fields[1].startswith("/"):
            continue
        point = fields[1].replace("\\040", " ")
        inside = dump_path == Path(point) or Path(point) in dump_path.parents
        if inside and point != "/" and point not in mounted:
            points.append(point)
    return sorted(points, key=lambda p: p.count("/"))


def _mount_dump_path(dump_path: Path) -> None:
    try:
        fstab = Path("/etc/fstab").read_text()
        mounted = {
            line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
        }
    except OSError:
        return
    for point in mounts_needed(dump_path, fstab, mounted):
        say(f"mounting {point} for the dump")
        result = subprocess.run(["mount", point], capture_output=True, text=True)
        if result.returncode != 0:
            raise CaptureError(f"cannot mount {point}: {result.stderr.strip()}")


@dataclass
class Capture:
    cfg: config.Config
    source: Path = VMCORE
    sender: remote.Sender | None = None  # sending to a target; the folder here is its record
    network_up: Callable[[], None] = lambda: None  # the way to the sender's host, made
    # The dump's capture.log: kept after the reboot, where the crash kernel's journal is not.
    log: Path | None = field(default=None, init=False)
    folder: Path | None = field(default=None, init=False)  # once made
    error: str = field(default="", init=False)  # why the dump was not saved

    def _log_lines(self, lines: list[str]) -> None:
        if self.log:
            with contextlib.suppress(OSError), self.log.open("a") as f:  # a full disk too
                f.writelines(f"{line}\n" for line in lines)

    def _say(self, message: str) -> None:
        say(message)
        self._log_lines([f"kdumpd: {message}"])

    def run(self) -> bool:
        """Save the dump; True when a complete vmcore was written."""
        started = time.time()
        with self.source.open("rb") as f:
            info = vmcore.vmcoreinfo(f)
        version = info.get("OSRELEASE", os.uname().release)
        root = self.cfg.dump_path
        _mount_dump_path(root)
        root.mkdir(parents=True, exist_ok=True)
        for victim in retention_victims(dumps.scan(root), self.cfg.keep_dumps):
            self._say(f"removing old dump {victim} (keep_dumps: {self.cfg.keep_dumps})")
            shutil.rmtree(victim, ignore_errors=True)
        folder = root / folder_name(started, version)
        folder.mkdir()
        self.folder = folder
        self.log = folder / dumps.CAPTURE_LOG
        location = self.sender.location(folder.name) if self.sender else ""
        self._say(f"saving the dump of {version} to {location or folder}")
        panic, compression, size, error, prepared = "", self.cfg.compression, 0, "", False
        try:
            panic = self._dmesg(folder)
            if self.sender:
                self.network_up()
                free = self.sender.prepare(folder.name, self.cfg.keep_dumps, self._say)
                prepared = True
                check_space(free, self.cfg.min_free_space, location)
                if isinstance(self.sender, remote.Nfs):  # mounted: written as here
                    size, compression = self._dump(self.sender.folder(folder.name), location)
                else:
                    size, compression = self._send(self.sender, folder.name)
            else:
                stat = os.statvfs(root)
                check_space(stat.f_bavail * stat.f_frsize, self.cfg.min_free_space, root)
                size, compression = self._dump(folder, str(root))
        except (CaptureError, remote.SendError, network.NoRoute, OSError) as e:
            # An OSError: the dump's file system failing under makedumpfile's output (EIO
            # from an NFS server gone away, say): said with the place, in the record too.
            error = self.error = str(e) if not isinstance(e, OSError) else (
                f"{location or root}: {e.strerror or e}")  # fmt: skip
            self._say(f"capture FAILED: {error}")
        meta = metadata(
            started=started,
            finished=time.time(),
            kernel_version=version,
            panic=panic,
            cfg=self.cfg,
            compression=compression,
            size=size,
            error=error,
            location=location,
        )
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        safefile.write_durably(folder / dumps.METADATA, text)
        if not error:
            self._say(
                f"dump saved: {location or folder / dumps.VMCORE} ({human_size(size)} in "
                f"{meta['duration_s']} s)"
            )
        if self.sender and prepared:
            self._beside(self.sender, folder, text)
        return not error

    def _send(self, sender: remote.Ssh, name: str) -> tuple[int, str]:
        """makedumpfile -F into ssh; renamed vmcore there once both ended well."""
        command, compression = self._command(None)
        stream = sender.stream(name)
        assert stream.stdin is not None
        try:
            returncode, output = run_makedumpfile(command, into=stream.stdin)
        finally:
            stream.stdin.close()  # ssh's end of the stream: EOF once makedumpfile is done
        self._log_lines(output)
        if failed := sender.stream_failure(stream):
            raise failed  # why makedumpfile could not write, too
        if returncode != 0:
            raise CaptureError(f"makedumpfile failed: {(output[-1:] or [f'exit {returncode}'])[0]}")
        return sender.complete(name), compression

    def _beside(self, sender: remote.Sender, folder: Path, meta: str) -> None:
        """The kernel log, metadata and capture log beside the sent dump (best effort: the
        dump is whole without them, and their copies stay here)."""
        try:
            if (folder / dumps.DMESG).exists():
                sender.put(folder.name, dumps.DMESG, (folder / dumps.DMESG).read_bytes())
            sender.put(folder.name, dumps.METADATA, meta.encode())
            self._say("kernel log and metadata sent beside the dump")
            log = self.log.read_bytes() if self.log and self.log.exists() else b""
            sender.put(folder.name, dumps.CAPTURE_LOG, log)
            sender.close()
        except (remote.SendError, OSError, subprocess.SubprocessError) as e:
            self._say(f"could not send the kernel log and metadata: {e}")

    def _dmesg(self, folder: Path) -> str:
        target = folder / dumps.DMESG
        result = subprocess.run(
            ["makedumpfile", "--dump-dmesg", str(self.source), str(target)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not target.exists():
            self._say(f"could not extract the kernel log: {result.stderr.strip()}")
            return ""
        panic = vmcore.panic_message(target.read_text(errors="replace"))
        self._say(f"panic: {panic or 'unknown'}")
        return panic

    def _threads(self, version_output: str) -> int:
        """makedumpfile's threads: one per CPU of the crash kernel (its nr_cpus=, the
        daemon's on a big machine or an admin's), at most MAX_CAPTURE_CPUS (RecommendedBytes
        counts no more), and only with a makedumpfile whose threads are safe."""
        cpus = min(len(os.sched_getaffinity(0)), reservation.MAX_CAPTURE_CPUS)
        if cpus > 1 and not skew.threads_safe(found := skew.parse_version(version_output.encode())):
            self._say(f"no makedumpfile threads of kdumpd's: {skew.threads_refusal(found)}")
            return 1
        return cpus

    def _command(self, output: Path | None) -> tuple[list[str], str]:
        version = subprocess.run(["makedumpfile", "-v"], capture_output=True, text=True).stdout
        command, compression = makedumpfile_command(
            self.cfg,
            self.source,
            output,
            supported_compressions(version),
            self._threads(version),
        )
        if compression != self.cfg.compression:
            self._say(
                f"this makedumpfile has no {self.cfg.compression} support; using {compression}"
            )
        self._say(" ".join(command))
        return command, compression

    def _dump(self, folder: Path, where: str) -> tuple[int, str]:
        """makedumpfile into the folder (`where` is what messages call it)."""
        incomplete = folder / dumps.INCOMPLETE
        command, compression = self._command(incomplete)
        returncode, output = run_makedumpfile(command)
        self._log_lines(output)
        if returncode != 0:
            reason = output[-1:] or [f"exit {returncode}"]
            if any("No space left" in line for line in output):
                incomplete.unlink(missing_ok=True)  # a partial dump must not fill the disk
                reason = [f"the dump file system is full ({where})"]
            raise CaptureError(f"makedumpfile failed: {reason[0]}")
        safefile.fsync(incomplete)
        incomplete.rename(folder / dumps.VMCORE)
        safefile.fsync(folder)
        return (folder / dumps.VMCORE).stat().st_size, compression


def action_after(cfg: config.Config, ok: bool) -> str:
    return cfg.final_action if ok else cfg.failure_action


def save(
    cfg: config.Config,
    sender: remote.Sender | None = None,
    network_up: Callable[[], None] = lambda: None,
) -> bool:
    """Save the dump and say how it went and what comes next; True when it is complete."""
    if not VMCORE.exists():
        say(f"{VMCORE} does not exist: this is not a crash kernel; nothing to do")
        ok = False
    else:
        capture = Capture(cfg, sender=sender, network_up=network_up)
        try:
            ok = capture.run()
        except Exception as e:  # a bug too: still recorded, still the failure action
            say(f"capture FAILED: {e}")
            ok, capture.error = False, str(e)
        crashtest.capture_record(Path("/"), ok, capture.error, capture.folder)
    say(f"{'capture complete' if ok else 'capture failed'}; {action_after(cfg, ok)}")
    os.sync()
    return ok


def main(config_path: Path) -> int:
    """`kdumpd capture`: in the machine's own systemd (capture mode "system")."""
    try:
        cfg = config.load(config_path)
    except config.ConfigError as e:
        say(f"configuration error, using the defaults: {e}")
        cfg = config.Config(path=config_path)
    ok = save(cfg)
    subprocess.run(ACTION_COMMANDS[action_after(cfg, ok)])
    return 0 if ok else 1


def announce_new(root: Path, state_file: Path, signal: Callable[[dumps.Dump], None]) -> None:
    """On the first start after a capture: one journal entry and one `signal` (DumpFound)
    per dump not announced yet."""
    try:
        announced = set(state_file.read_text().split("\n"))
    except FileNotFoundError:
        announced = set()
    found = dumps.scan(root)
    new = [d for d in found if d.path.name not in announced]
    for d in new:
        if d.complete:
            text = f"a crash dump was saved: {d.path} ({d.kernel_version}: {d.panic_message})"
        else:
            text = f"a crash dump could not be saved in {d.path}: {d.error}"
        journal.send(
            journal.WARNING if d.complete else journal.ERR,
            text,
            journal.MSG_DUMP_SAVED,
            dump_path=d.path,
            kernel_version=d.kernel_version,
            panic_message=d.panic_message,
            dump_complete=int(d.complete),
        )
        signal(d)
    if new or not state_file.exists():
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text("\n".join(sorted(d.path.name for d in found)) + "\n")
