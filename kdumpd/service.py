"""The daemon's core: decide what to load, load it, and never end up less protected.

Nothing here knows about D-Bus or GLib. Requests go into `Daemon.requests`
(kdumpd/requests.py); the worker thread hands them to `Daemon.serve` one at a time, and
the D-Bus layer learns about changes through the on_change callback.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import os
import platform
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from kdumpd import (
    cmdline,
    config,
    crashtest,
    environment,
    images,
    journal,
    kernels,
    network,
    requests,
    reservation,
    safefile,
    skew,
    target,
)
from kdumpd.loader import Image, Kexec, KexecError, snapshot
from kdumpd.sizes import format_size, human_size

STATES = ("loaded", "not-loaded", "loading", "failed", "no-reservation", "unsupported")


@dataclass(frozen=True)
class Status:
    """What the D-Bus properties show; names match them."""

    State: str = "not-loaded"
    CrashKernelLoaded: bool = False
    ReservedBytes: int = 0
    RecommendedBytes: int = 0
    KernelVersion: str = ""
    KernelImage: str = ""
    Initrd: str = ""
    CommandLine: str = ""
    LastLoadUsec: int = 0
    LastError: str = ""
    ConfigPath: str = ""
    CaptureMode: str = ""  # "initramfs" (kdumpd's own), "system" (the machine's), "" (none)
    LastTestResult: str = ""  # crashtest.RESULTS
    LastTestUsec: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Identity = tuple[tuple[str, tuple[int, ...]], ...]


def identity(*paths: Path | None) -> Identity:
    """Which files these are and whether they changed (safefile.identity without ctime:
    update-initramfs hard-links the old initrd before it writes the new one, and that
    must not start a reload of its own; () when absent)."""
    found: list[tuple[str, tuple[int, ...]]] = []
    for path in paths:
        if path is None:
            continue
        try:
            found.append((str(path), safefile.identity(path.stat(), ctime=False)))
        except OSError:
            found.append((str(path), ()))
    return tuple(found)


@dataclass(frozen=True)
class Arming:
    """How the crash kernel will save the dump."""

    mode: str  # "initramfs": kdumpd's capture initramfs; "system": the machine's own boot
    initrd: Path | None
    unpacked: int  # bytes of the initrd unpacked; 0 when its format does not say
    why: str  # why "system", for LastError
    route: network.Route | None = None  # the dump is sent to the target this way

    def as_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "initrd": self.initrd and str(self.initrd)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Arming:
        """From _planned's child (_apart): our own JSON, only the types to restore."""
        initrd, route = value["initrd"], value["route"]
        return cls(
            value["mode"],
            None if initrd is None else Path(initrd),
            value["unpacked"],
            value["why"],
            None if route is None else network.Route.from_json(route),
        )


@dataclass
class Loaded:
    """A crash kernel we loaded, kept as private copies so it can be loaded again."""

    version: str
    kernel: Image
    initrd: Image | None
    cmdline: str
    mode: str
    cpus: int  # the crash kernel's (nr_cpus=)
    route: network.Route | None  # the way to the target it sends the dump over

    def close(self) -> None:
        self.kernel.close()
        if self.initrd:
            self.initrd.close()


class Failure(Exception):
    """A reload that stopped before the syscall; state says which kind."""

    def __init__(self, state: str, message: str) -> None:
        super().__init__(message)
        self.state = state


def now_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_REALTIME) // 1000


RUN_DIR = target.RUN_DIR  # under the sysroot: kept across daemon restarts, not boots
# Which crash kernel this daemon loaded (its files' identities, command line, reservation):
# a daemon started again finds it loaded and adopts it instead of loading it again.
LOADED_RECORD = "loaded.json"
# Present after an Unload: file events and hotplug do not load until the next Reload.
UNLOADED_MARK = "unloaded"
# Created to crash the machine for a test: kdumpd-crash.path watches for it.
CRASH_REQUEST = "crash"


class Daemon:
    def __init__(
        self,
        config_path: Path,
        kexec: Kexec,
        sysroot: Path = Path("/"),
        on_change: Callable[[dict[str, Any]], None] = lambda changed: None,
        cache: Path = environment.CACHE_DIR,
        planner: environment.Planner = environment.plan,
    ) -> None:
        self.config_path = config_path
        self.kexec = kexec
        self.sysroot = sysroot
        self.run_dir = sysroot / RUN_DIR
        self.cache = cache
        self.planner = planner
        # A capture initramfs to build once the machine is protected (build_environment):
        # what its plan is made from.
        self.unbuilt: tuple[config.Config, kernels.KernelFiles] | None = None
        self.on_change = on_change
        self.status = Status(ConfigPath=str(config_path))
        self.config: config.Config | None = None
        self.good: Loaded | None = None
        self._lock = threading.Lock()
        self.requests = requests.Queue(on_change=self._publish)
        self._outcome = self.status.State  # how the last request ended
        self._said = ""  # what the last load or unload had to say, for LastError
        self._check_asked = 0  # when this daemon last asked for the target's check (µs)
        self._verdict_read: tuple[int, ...] = ()  # the verdict file LastError was made from
        self._attempt: Identity | None = None  # the files the last reload read
        self._began = 0.0  # when the reload under way began, by the monotonic clock
        # Set once the first request needs the CPU no more: inside kexec_file_load (which
        # runs without the GIL), or over. `kdumpd serve` imports GLib after it (cli.py).
        self.off_cpu = threading.Event()

    def _set(self, **changes: Any) -> None:
        """Report what changed. State is derived: "loading" while a request is queued or
        served, else how the last one ended. The D-Bus thread and the worker both report;
        the lock keeps updates whole."""
        with self._lock:
            if "State" in changes:
                self._outcome = changes["State"]
            changes["State"] = "loading" if self.requests.busy() else self._outcome
            old = self.status
            self.status = dataclasses.replace(old, **changes)
        changed = {k: v for k, v in changes.items() if getattr(old, k) != v}
        if changed:
            self.on_change(changed)

    def _publish(self) -> None:
        self._set()

    def serve(self, request: requests.Request) -> None:
        """One request from the queue (the worker's)."""
        try:
            self._serve(request)
        finally:
            self.off_cpu.set()
            give_back_memory()

    def _serve(self, request: requests.Request) -> None:
        if request.kind == requests.UNLOAD:
            self.unload()
        elif request.kind == requests.BUILD:
            self.build_environment()
        elif request.kind == requests.TEST:
            self.test(request.reason)
        elif request.kind == requests.TARGET:
            self.target_checked()
        elif self.unloaded_on_request() and not request.asked:
            journal.send(
                journal.INFO,
                f"{request.reason}: not loading, the crash kernel was unloaded on request "
                "(kdumpd reload loads it again)",
            )
        else:
            if request.asked:
                (self.run_dir / UNLOADED_MARK).unlink(missing_ok=True)
            self.reload(force=request.must, why=request.reason)

    def test_refusal(self) -> str:
        """Why a test now would prove nothing, or "" (asked on D-Bus, and again when the
        worker serves the test, after whatever was queued before it)."""
        if not self.kexec.loaded():
            return "the crash kernel is not loaded: a test crash would save no dump"
        if not self._boot_id():
            return "cannot read this boot's ID: the verdict could not be told from the test"
        dump_path = self.config.dump_path if self.config else config.Config().dump_path
        return crashtest.unreachable(self.sysroot, self.status.CaptureMode, dump_path)

    def test(self, why: str) -> None:
        """Crash the machine on purpose (kdumpd/crashtest.py); the verdict comes after the
        reboot (test_verdict)."""
        if refusal := self.test_refusal():
            journal.send(journal.ERR, f"{why}: no test, {refusal}")
            self._set()
            return
        test = crashtest.pending(self.sysroot, self._boot_id(), now_usec())
        self._set(LastTestResult=test.result, LastTestUsec=test.time_usec)
        journal.send(
            journal.WARNING,
            f"{why}: test {test.id}, crashing the machine now; the crash kernel saves a "
            "dump, and after the reboot kdumpd status has the verdict",
        )
        os.sync()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / CRASH_REQUEST).write_text(f"{test.id}\n")
        except OSError as e:
            self._report_test(
                crashtest.abandon(self.sysroot, test, f"cannot ask for the crash: {e}")
            )

    def test_verdict(self, dump_path: Path) -> None:
        """At start: the last test's result, decided now if its crash came and went. A
        crash asked for in this boot that a daemon before this one is still waiting for did
        not come (kdumpd-crash.path not running): the test failed, and the request goes, so
        that it cannot crash the machine later, unannounced."""
        boot_id = self._boot_id()
        if not boot_id:
            return
        request = self.run_dir / CRASH_REQUEST
        try:
            test, decided = crashtest.decide(self.sysroot, boot_id, dump_path)
            stale = request.exists()
            request.unlink(missing_ok=True)
            if stale and test and test.result == "pending":
                reason = (
                    f"the crash was asked for ({request}) but did not come: is "
                    "kdumpd-crash.path running (systemctl status kdumpd-crash.path)?"
                )
                test, decided = crashtest.abandon(self.sysroot, test, reason), True
        except OSError as e:
            journal.send(journal.ERR, f"cannot record the test's verdict: {e}")
            return
        if test is None:
            return
        if decided:
            self._report_test(test)
        else:
            self._set(LastTestResult=test.result, LastTestUsec=test.time_usec)

    def _boot_id(self) -> str:
        return _read(self.sysroot / "proc/sys/kernel/random/boot_id")

    def _report_test(self, test: crashtest.Test) -> None:
        if test.result == "passed":
            text = f"kdumpd test {test.id} passed: the crash was captured, {test.dump}"
        else:
            text = f"kdumpd test {test.id} failed: {test.reason}"
        journal.send(
            journal.INFO if test.result == "passed" else journal.ERR,
            text,
            journal.MSG_TEST_RESULT,
            test_id=test.id,
            test_result=test.result,
            dump_path=test.dump,
        )
        self._set(LastTestResult=test.result, LastTestUsec=test.time_usec)

    def unloaded_on_request(self) -> bool:
        return (self.run_dir / UNLOADED_MARK).exists()

    def refresh(self) -> Status:
        """Re-read the kernel's view; someone may have used kexec -p -u behind our back."""
        loaded = self.kexec.loaded()
        if loaded != self.status.CrashKernelLoaded:
            changes: dict[str, Any] = {"CrashKernelLoaded": loaded}
            if not loaded and self.status.State == "loaded":
                changes["State"] = "not-loaded"
            self._set(**changes)
        return self.status

    def reload(self, force: bool = True, why: str = "", checked: bool = False) -> None:
        """Re-read the config, re-check the reservation, load the crash kernel.

        Unforced (see requests.py for which requests are): only when the config or the
        chosen kernel's files differ from what the last reload read, so events that change
        nothing load nothing. `why` is what asked for it, for the journal. `checked`: the
        target's verdict asked for it, so no new check is asked for.
        """
        try:
            if not force and self._unchanged():
                if why:
                    journal.send(
                        journal.INFO,
                        f"{why}: answered by the last reload, which read these very files",
                    )
                self._set()
                return
            if why:
                journal.send(journal.INFO, f"reloading the crash kernel: {why}")
            self._began = time.monotonic()
            self._reload(checked)
        except Failure as failure:
            self._fail(failure.state, str(failure))
        except OSError as e:  # a file vanished between choosing and reading it
            self._fail("failed", str(e))
        except Exception as e:  # a bug: say so instead of staying "loading" for ever
            self._fail("failed", f"internal error: {e!r}")
            raise

    def _fail(self, state: str, message: str) -> None:
        journal.send(journal.ERR, message, journal.MSG_LOAD_FAILED, kdumpd_state=state)
        self._settle(state, message)

    def _settle(self, state: str, error: str) -> None:
        """End a reload or unload as the kernel sees it: a crash kernel that is still loaded
        keeps the machine covered, whatever went wrong."""
        loaded = self.kexec.loaded()
        self._said = error
        self._set(
            State="loaded" if loaded else state,
            CrashKernelLoaded=loaded,
            LastError=self._last_error(),
        )

    def _last_error(self) -> str:
        """What the last load or unload said, and what is known of the target: its last
        check (kdumpd-target-check.service's, which may come later) or why it cannot be."""
        cfg = self.config
        if cfg is None or cfg.target is None:
            return self._said
        problem = config.ssh_key_problem(cfg)
        self._verdict_read = self._verdict_identity()
        verdict = None if problem else target.recall(self._verdict, cfg.target, cfg.ssh_key)
        words = target.status_words(
            cfg.target, str(problem or ""), verdict, self._check_asked, self._going(cfg)
        )
        return " ".join(filter(None, (self._said, words)))

    def _going(self, cfg: config.Config) -> str:
        """Where the loaded crash kernel puts the dump of a machine with a target."""
        assert cfg.target is not None
        armed = self.good.route if self.good else None
        route, why = environment.sending(cfg, self.sysroot)
        if armed is None and route is not None:
            why = (
                environment.NO_NETWORK_IN_SYSTEM
                if self.good and self.good.mode == "system"
                else "the way to it was found after the crash kernel was loaded"
            )
        return target.where_dumps_go(cfg.target, armed, why, str(cfg.dump_path))

    def _way_changed(self, cfg: config.Config) -> str:
        """Why the capture initramfs loaded must be loaded again: the last check found
        another way to the target (or none), or "" when it did not."""
        if self.good is None or self.good.mode != "initramfs":
            return ""  # the system's boot: it brings no network up for kdumpd
        route, why = environment.sending(cfg, self.sysroot)
        if route == self.good.route:
            return ""
        assert cfg.target is not None
        return f"the way to {cfg.target.host} is {route}" if route else why

    def _verdict_identity(self) -> tuple[int, ...]:
        try:
            return safefile.identity(self._verdict.lstat())
        except OSError:
            return ()

    def verdict_unread(self) -> bool:
        """A verdict came that LastError does not tell yet (written while the watches were
        being set up again, say)."""
        cfg = self.config
        return bool(cfg and cfg.target) and self._verdict_identity() != self._verdict_read

    @property
    def _verdict(self) -> Path:
        return self.run_dir / target.VERDICT

    def _ask_target_check(self) -> None:
        """kdumpd-target-check.path starts the check when this file appears."""
        self._check_asked = target.now_usec()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / target.CHECK_REQUEST).touch()
        except OSError as e:
            journal.send(journal.WARNING, f"cannot ask for the target's check: {e}")

    def target_checked(self) -> None:
        """The target's verdict changed (kdumpd-target-check.service wrote it)."""
        cfg = self.config
        if cfg is not None and cfg.target is not None:
            verdict = target.recall(self._verdict, cfg.target, cfg.ssh_key)
            if verdict is not None:
                priority = journal.INFO if verdict.ok else journal.WARNING
                journal.send(priority, str(verdict), target_url=verdict.url)
            if changed := self._way_changed(cfg):
                # Not checked again: this verdict is new, and a load that fails must not
                # ask for the check whose verdict would try it again, and again.
                self.reload(force=True, why=changed, checked=True)
                return
        self._set(LastError=self._last_error())

    def _unchanged(self) -> bool:
        """The last reload read the same files, so another would end the same way; unless
        its crash kernel was unloaded behind our back."""
        if self._attempt is None or (self.good is not None and not self.kexec.loaded()):
            return False
        return self._inputs() == self._attempt

    def _inputs(self) -> Identity:
        """The config and the kernel files a reload would read now; the reload itself says
        what is wrong with them."""
        makedumpfile = skew.installed_path(self.sysroot)  # its version is in LastError
        try:
            cfg = config.load(self.config_path)
            files, _ = kernels.choose(cfg, platform.release(), self.sysroot)
        except (config.ConfigError, kernels.KernelNotFound, OSError):
            return identity(self.config_path, makedumpfile)
        return identity(self.config_path, makedumpfile, files.image, files.initrd)

    def watch_targets(self) -> dict[Path, Callable[[str], str | None]]:
        """Directories to watch, each with what a change of a file in it asks for: a reload
        for the config, the loaded kernel's files, those of the kernel the config asks for,
        and makedumpfile (whose version LastError may warn about); a look at the target's
        verdict when kdumpd-target-check.service wrote it."""
        cfg = self.config or config.Config(path=self.config_path)
        wanted = {"running": platform.release(), "latest": ""}.get(cfg.kernel, cfg.kernel)
        makedumpfile = skew.installed_path(self.sysroot) or self.sysroot / "usr/sbin/makedumpfile"
        names = {self.config_path.name, makedumpfile.name}
        dirs = {self.config_path.parent, self.sysroot / "boot", makedumpfile.parent}
        if self.good:
            for image in filter(None, (self.good.kernel, self.good.initrd)):
                if image.path.parent != self.cache:  # kdumpd's own initramfs
                    names.add(image.path.name)
                    dirs.add(image.path.parent)

        def matters(name: str) -> str | None:
            if name in names or (kernels.is_kernel_file(name) and (wanted == "" or wanted in name)):
                return requests.RELOAD
            return None

        watched: dict[Path, Callable[[str], str | None]] = {d: matters for d in sorted(dirs)}
        if cfg.target is not None:
            watched[self.run_dir] = lambda name: requests.TARGET if name == target.VERDICT else None
        return watched

    def _read_config(self) -> config.Config:
        try:
            cfg = config.load(self.config_path)
        except config.ConfigError as e:
            keep = " (the crash kernel that is loaded stays loaded)" if self.kexec.loaded() else ""
            for problem in e.problems:
                journal.send(
                    journal.ERR,
                    f"config: {problem}",
                    journal.MSG_CONFIG_ERROR,
                    config_file=problem.path,
                    config_line=problem.line,
                    config_key=problem.key,
                )
            raise Failure("failed", f"configuration error: {e}{keep}") from None
        self.config = cfg
        return cfg

    def _reload(self, checked: bool) -> None:
        # What _unchanged compares with: each file's identity taken before it is read, so
        # a change while reading makes the next unforced reload read it again.
        config_id = identity(self.config_path, skew.installed_path(self.sysroot))
        self._attempt = config_id
        cfg = self._read_config()
        if not self.kexec.supported():
            raise Failure(
                "unsupported",
                f"this kernel cannot load a crash kernel with kexec_file_load on "
                f"{self.kexec.machine} ({self.sysroot / 'sys/kernel/kexec_crash_loaded'} "
                "is missing: CONFIG_KEXEC_FILE/CONFIG_CRASH_DUMP off)",
            )
        try:
            files, note = kernels.choose(cfg, platform.release(), self.sysroot)
        except kernels.KernelNotFound as e:
            raise Failure("failed", str(e)) from None
        self._attempt = config_id + identity(files.image, files.initrd)
        if note:
            journal.send(journal.WARNING, note, kernel_version=files.version)
        elif (old := self.good) and old.version != files.version and not old.kernel.path.exists():
            journal.send(
                journal.NOTICE,
                f"crash kernel {old.version} was removed ({old.kernel.path} is gone); "
                f"loading {files.version}",
                kernel_version=files.version,
            )
        arming = self._arming(cfg, files)
        res = reservation.read_reservation(self.sysroot)
        kernel_size, _ = files.sizes()
        initrd_size = arming.initrd.stat().st_size if arming.initrd else 0
        makedumpfile = skew.installed_version(self.sysroot)
        admin_cpus = cmdline.appended_cpus(cfg.cmdline_append)
        size = reservation.sizing(
            res,
            kernel_size,
            initrd_size,
            arming.unpacked,
            arming.mode,
            admin_cpus,
            self.kexec.machine,
        )
        self._set(ReservedBytes=res.reserved_bytes, RecommendedBytes=size.recommended)
        # Fewer CPUs than planned is slower, not a risk: not a warning.
        verdict = reservation.assess(res, size.needed, cfg.min_reservation)
        warning = ""
        if verdict.state in ("none", "too-small"):
            journal.send(journal.ERR, verdict.message, journal.MSG_RESERVATION)
            state = "no-reservation" if verdict.state == "none" else "failed"
            raise Failure(
                state,
                f"{verdict.message} Set {verdict.suggestion} on the kernel "
                "command line and reboot.",
            )
        if verdict.state == "below-recommended":
            warning = f"warning: {verdict.message} Set {verdict.suggestion}."
            journal.send(journal.WARNING, warning, journal.MSG_RESERVATION)
        # The kernel makedumpfile will read at crash time is the running one.
        if skewed := skew.warning(makedumpfile, platform.release()):
            journal.send(journal.WARNING, f"warning: {skewed}", kernel_version=platform.release())
            warning = " ".join(filter(None, (warning, f"warning: {skewed}")))
        if cfg.target is not None:
            key = config.ssh_key_problem(cfg)
            if key:
                journal.send(journal.WARNING, f"warning: {key}")
            if key is None and not checked:
                self._ask_target_check()
        if size.why_one:
            journal.send(journal.NOTICE, f"capture keeps one CPU: {size.why_one}")
        if size.cpus > 1 and (unthreaded := skew.threads_refusal(makedumpfile)):
            journal.send(
                journal.NOTICE,
                f"capture gets {size.cpus} CPUs, makedumpfile no threads: {unthreaded}",
            )
        if size.cpus < size.usable:
            journal.send(
                journal.NOTICE,
                f"capture gets {size.cpus} of the {size.usable} CPUs planned for it: "
                f"crashkernel={format_size(size.recommended)} would give it all",
            )
        new = self._prepare(files, arming, cfg, size.cpus, res.boot_apicid)
        self._load(new, warning, note, arming.why)

    def _arming(self, cfg: config.Config, files: kernels.KernelFiles) -> Arming:
        """kdumpd's capture initramfs when it can reach the dump path, else the machine's
        own initramfs and systemd. An initramfs not built yet is built now while a crash
        kernel is loaded (the machine stays protected meanwhile); with none loaded, the
        machine's boot is armed first and the build comes after (build_environment). The
        plan, and the build, are made in a child process (_apart)."""
        # plan.json is the real planner's record (a test's fake plans write none).
        recalled = self.planner is environment.plan and environment.recall(
            cfg, files.version, self.sysroot, self.cache
        )
        if recalled:
            return Arming("initramfs", recalled.path, recalled.unpacked, "", recalled.route)
        planned = _apart(lambda: self._planned(cfg, files, build=self.kexec.loaded()))
        if planned["unbuilt"]:
            self.unbuilt = (cfg, files)
        return Arming.from_json(planned["arming"])

    def _planned(
        self, cfg: config.Config, files: kernels.KernelFiles, build: bool
    ) -> dict[str, Any]:
        """_arming's plan, and its image built if `build` (else {"unbuilt": True}), as JSON."""

        def system(why: str) -> Arming:
            return Arming("system", files.initrd, images.initrd_unpacked(files.initrd), why)

        plan, reason = environment.choose(cfg, files.version, self.sysroot, self.planner)
        if plan is None:
            why = reason and f"capture boots the system's own initramfs and systemd: {reason}"
            if why:
                journal.send(journal.NOTICE, why, kernel_version=files.version)
            return {"arming": system(why).as_json(), "unbuilt": False}
        image = environment.find(plan, self.cache)
        if image is None and not build:
            journal.send(
                journal.INFO,
                "the capture initramfs is not built yet: the system's own boot is armed "
                "until it is",
            )
            return {"arming": system("").as_json(), "unbuilt": True}
        if image is None:
            image = self._build(plan)
        try:
            environment.remember(plan, image, self.cache)
        except OSError as e:  # only the next start's shortcut is lost
            journal.send(journal.WARNING, f"cannot write {self.cache / environment.MANIFEST}: {e}")
        initramfs = Arming("initramfs", image.path, image.unpacked, "", image.route)
        return {"arming": initramfs.as_json(), "unbuilt": False}

    def _build(self, plan: environment.Plan) -> environment.Image:
        try:
            image = environment.build(plan, self.cache)
        except OSError as e:
            raise Failure("failed", f"cannot write the capture initramfs: {e}") from None
        journal.send(
            journal.INFO,
            f"capture initramfs built in {image.seconds:.1f} s: {image.path} "
            f"({human_size(image.size)}, {human_size(image.unpacked)} unpacked; dump file "
            f"system {plan.target.fstype} UUID {plan.target.uuid} on "
            f"{', '.join(plan.target.devices)})",
        )
        return image

    def build_environment(self) -> None:
        """Build the capture initramfs the last reload had to do without, and switch to it.
        Planned again, in the child that builds (_apart): the reload after it recalls it."""
        owed, self.unbuilt = self.unbuilt, None
        if owed is None:
            return
        cfg, files = owed
        try:
            planned = _apart(lambda: self._planned(cfg, files, build=True))
        except Failure as failure:
            journal.send(journal.ERR, str(failure))
            return
        if planned["arming"]["mode"] == "initramfs":  # else the plan has changed meanwhile
            self.reload(force=True, why="the capture initramfs is built")

    def _prepare(
        self,
        files: kernels.KernelFiles,
        arming: Arming,
        cfg: config.Config,
        cpus: int,
        boot_apicid: int | None,
    ) -> Loaded:
        try:
            kernel = snapshot(files.image)
            initrd = snapshot(arming.initrd) if arming.initrd else None
        except OSError as e:
            raise Failure("failed", f"cannot read {e.filename}: {e.strerror}") from None
        try:
            if reason := images.unfit(kernel, initrd, self.kexec.machine, self.sysroot):
                if self.kexec.loaded():
                    reason += f" (the loaded crash kernel {self.status.KernelVersion} stays loaded)"
                raise ValueError(reason)
            running = (self.sysroot / "proc/cmdline").read_text().strip()
            limit = images.cmdline_max(os.pread(kernel.fd, 0x8000, 0))
            line = cmdline.build(
                running,
                cfg.cmdline_remove,
                cfg.cmdline_append,
                self.kexec.machine,
                limit,
                system=arming.mode == "system",
                cpus=cpus,
                boot_apicid=boot_apicid,
            )
        except (OSError, ValueError) as e:
            kernel.close()
            if initrd:
                initrd.close()
            raise Failure("failed", str(e)) from None
        return Loaded(files.version, kernel, initrd, line, arming.mode, cpus, arming.route)

    def _record(self, new: Loaded) -> dict[str, Any]:
        return {
            "boot_id": self._boot_id(),
            "kernel": [str(new.kernel.path), *new.kernel.identity],
            "initrd": [str(new.initrd.path), *new.initrd.identity] if new.initrd else [],
            "cmdline": new.cmdline,
            "reserved_bytes": self.status.ReservedBytes,
        }

    def _adoptable(self, new: Loaded) -> bool:
        """This daemon has loaded nothing yet, and the crash kernel that is loaded is the
        one a daemon before it loaded from exactly these files in this boot: loading it
        again would only open a gap (kexec_file_load frees the old image first)."""
        if self.good is not None or not self.kexec.loaded():
            return False
        try:
            before = json.loads((self.run_dir / LOADED_RECORD).read_text())
        except (OSError, ValueError):
            return False
        return bool(before == self._record(new))

    def _load(self, new: Loaded, warning: str, note: str, why: str) -> None:
        adopted = self._adoptable(new)
        syscall = time.monotonic()
        if not adopted:
            self.off_cpu.set()
            try:
                self.kexec.load(new.kernel, new.initrd, new.cmdline)
            except KexecError as e:
                new.close()
                initrd = new.initrd.path if new.initrd else ""
                self._restore(f"{e.strerror} [{new.kernel.path}, {initrd}]")
                return
        syscall = time.monotonic() - syscall
        if self.good:
            self.good.close()
        self.good = new
        loaded = self.kexec.loaded()
        self._said = (
            " ".join(filter(None, (warning, note, why)))
            if loaded
            else "the kernel accepted the crash kernel but reports none loaded"
        )
        self._remember(new if loaded else None)
        sizes = f"kernel {human_size(new.kernel.size)}"
        if new.initrd:
            sizes += f", initrd {human_size(new.initrd.size)}"
        done = (
            "was loaded already, by the daemon before this one: adopted"
            if adopted
            else f"loaded ({sizes}, capture mode {new.mode}"
            f"{f', {new.cpus} CPUs' if new.cpus > 1 else ''}) into a "
            f"{format_size(self.status.ReservedBytes)} reservation in "
            f"{time.monotonic() - self._began:.1f} s, {syscall:.2f} s of it in "
            "kexec_file_load"
        )
        journal.send(
            journal.INFO,
            f"crash kernel {new.version} {done}",
            journal.MSG_LOADED,
            kernel_version=new.version,
            kernel_image=new.kernel.path,
            initrd=new.initrd.path if new.initrd else "",
            kernel_cmdline=new.cmdline,
        )
        if self.config and self.config.target:
            going = self._going(self.config)
            journal.send(journal.WARNING if going.startswith("warning") else journal.INFO, going)
        self._set(
            State="loaded" if loaded else "failed",
            CrashKernelLoaded=loaded,
            KernelVersion=new.version,
            KernelImage=str(new.kernel.path),
            Initrd=str(new.initrd.path) if new.initrd else "",
            CommandLine=new.cmdline,
            CaptureMode=new.mode if loaded else "",
            LastLoadUsec=now_usec(),
            LastError=self._last_error(),
        )

    def _remember(self, loaded: Loaded | None) -> None:
        """What is loaded, for a daemon started after this one (see _adoptable)."""
        record = self.run_dir / LOADED_RECORD
        try:
            if loaded is None:
                record.unlink(missing_ok=True)
                return
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = record.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._record(loaded)))
            tmp.rename(record)
        except OSError as e:  # only a restart's adoption is lost: it loads again instead
            journal.send(journal.WARNING, f"cannot write {record}: {e.strerror}")

    def _restore(self, message: str) -> None:
        """The failed load freed the old image; load the last good copy again at once."""
        good = self.good
        if good is None:
            self._remember(None)
            raise Failure("failed", message)
        try:
            self.kexec.load(good.kernel, good.initrd, good.cmdline)
        except KexecError as e:
            self.good = None
            good.close()
            self._remember(None)
            raise Failure(
                "failed",
                f"{message}; loading the previous crash kernel "
                f"{good.version} again also failed: {e.strerror}",
            ) from None
        self._fail(
            "loaded", f"{message}; the previous crash kernel {good.version} was loaded again"
        )

    def unload(self) -> None:
        try:
            self.kexec.unload()
        except KexecError as e:
            self._settle("not-loaded", str(e.strerror))
            raise
        if self.good:
            self.good.close()
            self.good = None
        self._attempt = None
        self._remember(None)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / UNLOADED_MARK).touch()
        except OSError as e:
            journal.send(journal.WARNING, f"cannot keep the unload across a restart: {e}")
        self._set(CaptureMode="")
        journal.send(
            journal.NOTICE,
            "crash kernel unloaded; nothing loads it again in this boot but kdumpd reload",
            journal.MSG_UNLOADED,
        )
        self._settle("not-loaded", "")


_LIBC = ctypes.CDLL(None)  # the process's own libc: mallopt(3), malloc_trim(3)
# mallopt(3) parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def _tune_malloc() -> None:
    """Memory freed is memory given back. glibc gives each thread its own arena, and what
    the worker and the dump lister allocate and the main loop frees piles up in theirs
    (measured: about 100 bytes per ListDumps, for ever); the threads seldom run at once, so
    one arena costs nothing. And glibc raises its mmap threshold to the largest block freed:
    after the capture initramfs's xz encoder (tens of MB) the next big buffers came from
    the heap and stayed there (measured in the stock guest: 41 MB anonymous memory after
    one build). A fixed threshold keeps large blocks mapped, so they are unmapped on free."""
    _LIBC.mallopt(M_ARENA_MAX, 1)
    _LIBC.mallopt(M_MMAP_THRESHOLD, 256 << 10)
    _LIBC.mallopt(M_TRIM_THRESHOLD, 1 << 20)


def give_back_memory() -> None:
    """Free what a request left behind and return it to the kernel: a plan reads every
    file of the capture initramfs (a few MB), and some of it is only freed by the cycle
    collector; freed blocks under a live one stay resident until malloc_trim(3) (measured
    in the stock guest, a reload that planned: anonymous memory +7.4 MB, +5.2 MB after
    gc.collect() and malloc_trim)."""
    gc.collect()
    with contextlib.suppress(AttributeError):  # a libc without it (musl)
        _LIBC.malloc_trim(0)


def _apart(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """work() in a child process, so that what it allocates leaves with it: a plan reads
    every file of the capture initramfs and builds its archive, and after it Python's
    small-object arenas stayed mapped in the daemon for good, a few survivors in each
    (measured in the stock guest: VmRSS 31.5 MB once armed after the install, which planned
    and built, 26.2 MB after a reboot that recalled the plan). Returns work()'s JSON; a
    Failure it raises is raised here, any other error is a Failure too. What the child
    has to say goes to the journal from here: journald names the unit of a message from
    its sender's cgroup, which a child reaped at once may have left (systemd#2913).

    The child runs only this code, and ends with os._exit: no GLib, no lock another
    thread may hold (Python's own are reset by os.fork, the inherited objects are frozen
    out of its garbage collection, it writes to no stream), hence fork without exec."""
    read, write = os.pipe()
    gc.freeze()  # a collection in the child must not free the GLib thread's objects
    try:
        pid = os.fork()
    except OSError as e:
        gc.unfreeze()
        os.close(read)
        os.close(write)
        raise Failure("failed", f"cannot start a process to plan in: {e.strerror}") from None
    if pid == 0:
        _child(work, write)
    gc.unfreeze()
    os.close(write)
    try:
        with os.fdopen(read) as answer:
            said = answer.read()
    finally:
        _, status = os.waitpid(pid, 0)
    try:
        outcome = json.loads(said)
    except ValueError:
        raise Failure(
            "failed", f"the planner's process ended without an answer ({_ended(status)})"
        ) from None
    for entry in outcome["journal"]:
        journal.send(*entry[:3], **entry[3])
    if "value" in outcome:
        return dict(outcome["value"])
    raise Failure(outcome["state"], outcome["message"])


def _child(work: Callable[[], dict[str, Any]], write: int) -> NoReturn:
    """_apart's child: the daemon's signal handlers (GLib's, inherited) undone, and dead
    with the daemon, so that stopping the daemon stops it; its answer, one JSON line."""
    code = 1
    try:
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, signal.SIG_DFL)
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        held = journal.hold()
        try:
            outcome: dict[str, Any] = {"value": work()}
        except Failure as failure:
            outcome = {"state": failure.state, "message": str(failure)}
        except BaseException as e:  # told to the daemon, which goes on
            journal.send(journal.ERR, f"planning failed: {traceback.format_exc()}")
            outcome = {"state": "failed", "message": f"planning failed: {e!r}"}
        with os.fdopen(write, "wb") as out:
            out.write(json.dumps({**outcome, "journal": held}).encode())
        code = 0
    finally:
        os._exit(code)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# os.fork in a process with threads warns on Python 3.12+: _apart's child is made for it.
warnings.filterwarnings("ignore", r".*use of fork\(\) may lead to deadlocks", DeprecationWarning)


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(number).name}"
        return f"killed by signal {number}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def start(daemon: Daemon) -> requests.Worker:
    """The worker, with the first load queued. It needs no bus: started before GLib and
    pydbus are imported (seconds on a slow machine at boot), it runs alongside them,
    mostly in the kernel without the GIL."""
    _tune_malloc()
    worker = requests.Worker(daemon.requests, daemon.serve)
    daemon.requests.put(requests.RELOAD, "", must=True)
    return worker


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
