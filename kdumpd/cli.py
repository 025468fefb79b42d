"""The `kdumpd` command: the daemon, and the clients that talk to it or work offline."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdumpd import (
    UserError,
    bootloader,
    cmdline,
    config,
    environment,
    images,
    kernels,
    reservation,
    skew,
    target,
)
from kdumpd.sizes import SizeError, format_size, human_size, parse_size

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_LOADED = 3  # like `systemctl is-active`
FIRST_LOAD_FIRST_S = 10.0  # at most: a first load stuck for good is the start timeout's


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _when(usec: int) -> str:
    if not usec:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(usec / 1_000_000))


def cmd_serve(args: argparse.Namespace) -> int:
    from kdumpd.loader import Kexec
    from kdumpd.service import Daemon, start

    daemon = Daemon(args.config, Kexec())
    worker = start(daemon)
    # Importing GLib and pydbus is CPU work, and the worker's Python shares the GIL with
    # it: let the first load reach the kernel first; the imports then run beside the
    # syscall (measured after a crash, stock guest: the load's preparation took 1.5 s with
    # the imports beside it).
    daemon.off_cpu.wait(FIRST_LOAD_FIRST_S)
    from kdumpd import dbus_service

    return dbus_service.serve(daemon, worker)


def cmd_capture(args: argparse.Namespace) -> int:
    from kdumpd import capture

    return capture.main(args.config)


_MODES = {
    "initramfs": "initramfs (kdumpd's own capture initramfs)",
    "system": "system (the machine's own initramfs and systemd)",
}


def next_boot(sysroot: Path) -> str:
    """For `kdumpd status`: the crashkernel= configured for the next boot, when it is not
    the one in effect; "" when they agree or the boot loader's files cannot be read."""
    try:
        running = (sysroot / "proc/cmdline").read_text()
        return bootloader.difference(running, bootloader.configured(sysroot))
    except (OSError, UserError):
        return ""


def cmd_status(args: argparse.Namespace) -> int:
    from kdumpd import dbus_service

    status = dbus_service.Client().status()
    if args.json:
        _print_json(status)
    else:
        reserved = human_size(status["ReservedBytes"])
        recommended = human_size(status["RecommendedBytes"])
        loaded = "loaded" if status["CrashKernelLoaded"] else "not loaded"
        rows = [
            ("State", status["State"]),
            ("Crash kernel", f"{status['KernelVersion'] or '-'} ({loaded})"),
            ("Kernel image", status["KernelImage"] or "-"),
            ("Initrd", status["Initrd"] or "-"),
            ("Capture mode", _MODES.get(status["CaptureMode"], "-")),
            ("Command line", status["CommandLine"] or "-"),
            ("Reservation", f"{reserved} (capture needs about {recommended})"),
            *([("Next boot", note)] if (note := next_boot(Path("/"))) else []),
            ("Last load", _when(status["LastLoadUsec"])),
            ("Last test", _test_words(status["LastTestResult"], status["LastTestUsec"])),
            ("Last error", status["LastError"] or "-"),
            ("Config", status["ConfigPath"]),
        ]
        for label, value in rows:
            print(f"{label + ':':14} {value}")
    return EXIT_OK if status["CrashKernelLoaded"] else EXIT_NOT_LOADED


def _test_words(result: str, usec: int) -> str:
    if not result:
        return "never (kdumpd test)"
    return f"{result} ({_when(usec)}; journalctl -t kdumpd says more)"


def cmd_test(args: argparse.Namespace) -> int:
    from kdumpd import dbus_service

    client = dbus_service.Client()
    if not client.status()["CrashKernelLoaded"]:
        raise UserError("the crash kernel is not loaded (kdumpd status): a test would save no dump")
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError("kdumpd test crashes this machine: with no terminal to ask, pass --yes")
        answer = input(
            f"This crashes {platform.node()} now; it reboots once the crash kernel has saved "
            "a dump, and kdumpd status then has the verdict. Crash it? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("no test")
            return EXIT_ERROR
    client.test()
    print(
        "crash requested: the machine crashes now; after the reboot, kdumpd status has the verdict"
    )
    return EXIT_OK


def _wait_for(action: Callable[[Any], None]) -> int:
    from kdumpd import dbus_service

    status = dbus_service.Client().call_and_wait(action)
    print(f"{status['State']}: {status['KernelVersion'] or '-'}")
    if status["LastError"]:
        print(status["LastError"], file=sys.stderr)
    return EXIT_OK if status["CrashKernelLoaded"] else EXIT_NOT_LOADED


def cmd_reload(args: argparse.Namespace) -> int:
    return _wait_for(lambda proxy: proxy.Reload())


def cmd_unload(args: argparse.Namespace) -> int:
    if args.local:
        from kdumpd.loader import Kexec, KexecError

        kexec = Kexec()
        try:
            kexec.unload()
        except KexecError as e:
            raise UserError(str(e.strerror)) from None
        return EXIT_OK if not kexec.loaded() else EXIT_ERROR
    rc = _wait_for(lambda proxy: proxy.Unload())
    return EXIT_OK if rc == EXIT_NOT_LOADED else EXIT_ERROR


def _capture_sizes(
    cfg: config.Config, files: kernels.KernelFiles, sysroot: Path
) -> tuple[str, int, int, str]:
    """As the daemon arms it: the capture mode, its initrd's size as loaded and unpacked
    (0: not known, estimated), and why the mode is "system"."""
    plan, why = environment.choose(cfg, files.version, sysroot)
    if plan is None:
        unpacked = images.initrd_unpacked(files.initrd)
        return "system", files.sizes()[1], unpacked, why or "initrd: is set in the config"
    packed, unpacked = environment.sizes(plan)
    return "initramfs", packed, unpacked, ""


def cmd_check(args: argparse.Namespace) -> int:
    problems: list[str] = []
    warnings: list[str] = []
    try:
        cfg = config.load(args.config)
    except config.ConfigError as e:
        problems += [str(p) for p in e.problems]
        cfg = config.Config(path=args.config)
    sysroot = Path("/")
    try:
        files, note = kernels.choose(cfg, platform.release(), sysroot)
        if note:
            warnings.append(note)
        kernel_size = files.sizes()[0]
        print(f"crash kernel: {files.version} ({files.image}, {files.initrd or 'no initrd'})")
        mode, initrd_size, unpacked, why = _capture_sizes(cfg, files, sysroot)
        print(f"capture mode: {mode}{f' ({why})' if why else ''}")
    except (kernels.KernelNotFound, OSError) as e:
        problems.append(str(e))
        kernel_size = initrd_size = unpacked = 0
        mode = "system"
    res = reservation.read_reservation(sysroot)
    makedumpfile = skew.installed_version(sysroot)
    admin_cpus = cmdline.appended_cpus(cfg.cmdline_append)
    size = reservation.sizing(
        res, kernel_size, initrd_size, unpacked, mode, admin_cpus, platform.machine()
    )
    verdict = reservation.assess(res, size.needed, cfg.min_reservation)
    print(
        f"reservation: {human_size(res.reserved_bytes)}, capture needs about "
        f"{human_size(size.recommended)}" + (f" with {size.usable} CPUs" if size.usable > 1 else "")
    )
    if size.why_one:
        print(f"capture CPUs: 1 ({size.why_one})")
    elif size.cpus < size.usable:
        print(f"capture CPUs: {size.cpus} of {size.usable} (the reservation holds no more)")
    if size.cpus > 1 and (unthreaded := skew.threads_refusal(makedumpfile)):
        print(f"makedumpfile threads: none ({unthreaded})")
    if verdict.state in ("none", "too-small"):
        problems.append(f"{verdict.message} Set {verdict.suggestion}.")
    elif verdict.state == "below-recommended":
        warnings.append(f"{verdict.message} Set {verdict.suggestion}.")
    if skewed := skew.warning(makedumpfile, platform.release()):
        warnings.append(skewed)
    if cfg.target is not None:
        if key := config.ssh_key_problem(cfg):
            problems.append(str(key))
        elif args.target:
            problems += _target_problems(cfg.target, cfg.ssh_key)
        route, why = environment.sending(cfg)
        if route and mode == "system":
            route, why = None, environment.NO_NETWORK_IN_SYSTEM
        going = target.where_dumps_go(cfg.target, route, why, str(cfg.dump_path))
        if route is None:
            warnings.append(going.removeprefix("warning: "))
        else:
            print(going)
    elif args.target:
        problems.append(f"{cfg.path}: --target: no target is configured (dumps go to dump_path)")
    try:
        running = (sysroot / "proc/cmdline").read_text().strip()
        line = cmdline.build(
            running,
            cfg.cmdline_remove,
            cfg.cmdline_append,
            platform.machine(),
            system=mode == "system",
            cpus=size.cpus,
            boot_apicid=res.boot_apicid,
        )
        print(f"capture command line: {line}")
    except (OSError, cmdline.CmdlineTooLong) as e:
        problems.append(str(e))
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if problems:
        return EXIT_ERROR
    print(f"{args.config}: OK")
    return EXIT_OK


RUN_DIR = Path("/") / target.RUN_DIR  # the daemon's: it reads the verdict there


def _tell_the_daemon(found: target.Verdict) -> None:
    """A check made here is news for a running daemon too (its LastError tells the last
    one): after target-setup installed the key, say. Not for a user who cannot write there."""
    if RUN_DIR.is_dir():
        with contextlib.suppress(OSError):
            target.record(found, RUN_DIR / target.VERDICT)


def _target_problems(t: target.Target, key: Path) -> list[str]:
    """`kdumpd check --target`: over the network, now."""
    found = target.probe(t, key)
    _tell_the_daemon(found)
    if not found.ok:
        return [str(found)]
    print(found)
    return []


def cmd_target_check(args: argparse.Namespace) -> int:
    """For the daemon, which has no network: kdumpd-target-check.service runs this when the
    daemon (at arming) or a network hook asks, and the verdict goes where the daemon reads
    it (its run directory)."""
    run = Path(args.run_dir)
    # First: a request that comes while this one runs is another check.
    (run / target.CHECK_REQUEST).unlink(missing_ok=True)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as e:  # the daemon's LastError says so too
        raise UserError(f"configuration error: {e}") from None
    verdict_path = run / target.VERDICT
    if cfg.target is None:
        verdict_path.unlink(missing_ok=True)
        print(f"{cfg.path}: no target, nothing to check")
        return EXIT_OK
    if problem := config.ssh_key_problem(cfg):
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    found = target.probe(cfg.target, cfg.ssh_key)
    try:
        target.record(found, verdict_path)
    except OSError as e:
        raise UserError(f"cannot record the verdict in {verdict_path}: {e.strerror}") from None
    print(found if found.ok else f"error: {found}", file=sys.stdout if found.ok else sys.stderr)
    return EXIT_OK if found.ok else EXIT_ERROR


def cmd_target_setup(args: argparse.Namespace) -> int:
    """The ssh key, made if missing, installed on the target by ssh-copy-id, which also
    records the target's host key in /etc/kdumpd/known_hosts (on first contact, as ssh
    does: check its fingerprint against the server's)."""
    cfg = config.load(args.config)
    if not isinstance(cfg.target, target.SshTarget):
        raise UserError(f"{cfg.path}: target: set an ssh:// target first")
    t, key = cfg.target, cfg.ssh_key
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        made = subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"kdumpd@{platform.node()}",
             "-f", str(key)],
            check=False,
        )  # fmt: skip
        if made.returncode != 0:
            raise UserError(f"ssh-keygen could not create {key}")
        print(f"created {key} and {key}.pub")
    options = target.ssh_options(t, key, first_contact=True)
    # ssh-copy-id keeps its temporary files in ~/.ssh, which root often lacks (and the
    # guest agent's commands have no HOME): a home of its own, gone afterwards.
    import tempfile  # here: `kdumpd serve` imports this module, and tempfile 0.6 MB with it

    with tempfile.TemporaryDirectory(prefix="kdumpd-setup-") as home:
        (Path(home) / ".ssh").mkdir(mode=0o700)
        copied = subprocess.run(
            ["ssh-copy-id", "-i", f"{key}.pub", *options, f"{t.user}@{t.host}"],
            check=False,
            env={**os.environ, "HOME": home},
        )
    if copied.returncode != 0:
        raise UserError(f"ssh-copy-id could not install {key}.pub for {t.user}@{t.host}")
    found = target.probe(t, key)
    _tell_the_daemon(found)
    print(found)
    return EXIT_OK if found.ok else EXIT_ERROR


def _recommended(ram: int) -> int:
    """The reservation capture needs on a machine with `ram`, as the daemon would arm it."""
    try:
        cfg = config.load()
    except config.ConfigError:
        cfg = config.Config()
    try:
        files, _ = kernels.choose(cfg, platform.release())
        mode, initrd_size, unpacked, _ = _capture_sizes(cfg, files, Path("/"))
        kernel_size = files.sizes()[0]
    except (kernels.KernelNotFound, OSError):
        kernel_size = initrd_size = unpacked = 0
        mode = "system"
    res = dataclasses.replace(reservation.read_reservation(), ram_bytes=ram)
    admin_cpus = cmdline.appended_cpus(cfg.cmdline_append)
    size = reservation.sizing(
        res, kernel_size, initrd_size, unpacked, mode, admin_cpus, platform.machine()
    )
    return size.recommended


def _parse_value(value: str) -> reservation.CrashKernelParam:
    try:
        return reservation.parse_crashkernel_value(value)
    except reservation.CrashKernelSyntaxError as e:
        raise UserError(f"{e} (e.g. 256M, or 2G-64G:256M,64G-:512M)") from None


def set_crashkernel(
    value: str,
    force: bool,
    sysroot: Path = Path("/"),
    runner: Callable[[tuple[str, ...]], None] = bootloader.run,
) -> int:
    """`kdumpd crashkernel --set`: show the change, refuse to override an administrator's
    crashkernel= without --force, write it, and check what the next boot gets."""
    value = value.removeprefix("crashkernel=")
    _parse_value(value)
    change = bootloader.plan(sysroot, value)
    if change.unchanged:
        print(f"crashkernel={value} is configured for the next boot already; nothing to do")
        return EXIT_OK
    if change.elsewhere and not force:
        where = "; ".join(map(str, change.elsewhere))
        raise UserError(
            f"crashkernel= is set already ({where}); remove it there, or run again with "
            f"--force to write crashkernel={value} anyway"
        )
    for line in change.diff:
        print(line)
    for setting in change.elsewhere:
        print(f"note: --force: crashkernel={value} replaces or overrides {setting}")
    bootloader.apply(change, sysroot, runner)
    after = bootloader.configured(sysroot).values
    if not bootloader.gets(after, value):
        raise UserError(
            f"wrote {change.path or change.commands[0][0]}, but the next boot gets "
            f"{' '.join(f'crashkernel={v}' for v in after.values()) or 'no crashkernel='}: "
            "the boot loader's configuration sets it after kdumpd's"
        )
    print(f"crashkernel={value} is configured for the next boot; reboot to apply it")
    return EXIT_OK


def cmd_crashkernel(args: argparse.Namespace) -> int:
    res = reservation.read_reservation(Path("/"))
    try:
        ram = parse_size(args.memory) if args.memory else res.ram_bytes
    except SizeError as e:
        raise UserError(f"--memory: {e}") from None
    if args.set:
        if args.json:
            raise UserError("--json does not go with --set")
        value = args.value or format_size(_recommended(ram))
        return set_crashkernel(value, args.force)
    if args.value is not None:
        value = args.value.removeprefix("crashkernel=")
        reserved = _parse_value(value).reserved_bytes(ram)
        if args.json:
            _print_json({"value": value, "memory_bytes": ram, "reserved_bytes": reserved})
        else:
            print(
                f"crashkernel={value} reserves {format_size(reserved) if reserved else 'nothing'}"
                f" on a machine with {human_size(ram)} of RAM"
            )
        return EXIT_OK
    recommended = _recommended(ram)
    verdict = reservation.assess(res, recommended)
    params = {kind: p.text for kind, p in res.params.items()}
    if args.json:
        _print_json(
            {
                "cmdline": params,
                "memory_bytes": ram,
                "reserved_bytes": res.reserved_bytes,
                "iomem": [{"start": r.start, "end": r.end} for r in res.iomem],
                "recommended_bytes": recommended,
                "recommended": f"crashkernel={format_size(recommended)}",
                "verdict": verdict.state,
                "message": verdict.message,
            }
        )
        return EXIT_OK
    given = " ".join(f"crashkernel={t}" for t in params.values()) or "none"
    print(f"kernel command line: {given}")
    if res.param_error:
        print(f"  error: {res.param_error}")
    print(f"memory: {human_size(ram)}")
    print(f"reserved: {human_size(res.reserved_bytes)} ({res.reserved_bytes} bytes)")
    for r in res.iomem:
        print(f"  Crash kernel {r.start:#x}-{r.end:#x}")
    print(f"recommended: crashkernel={format_size(recommended)}")
    print(verdict.message)
    return EXIT_OK


def cmd_dumps(args: argparse.Namespace) -> int:
    from kdumpd import dbus_service

    found = dbus_service.Client().list_dumps()
    if args.json:
        _print_json(found)
        return EXIT_OK
    if not found:
        print("no dumps saved")
    for d in found:
        sent = d.get("Location", "")  # a dump sent to a target: the folder here is its record
        state = "complete" if d["Complete"] else "NOT SAVED" if sent else "INCOMPLETE"
        if d["Error"]:  # a complete dump may have one too: its folder could not all be read
            state += f": {d['Error']}"
        print(
            f"{sent or d['Path']}  {_when(d['TimeUsec'])}  {d['KernelVersion']}  "
            f"{human_size(d['SizeBytes'])}  {state}"
        )
        if sent:
            print(f"    recorded in {d['Path']}")
        if d["PanicMessage"]:
            print(f"    {d['PanicMessage']}")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdumpd", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    config_arg: dict[str, Any] = {
        "type": Path,
        "default": config.DEFAULT_PATH,
        "help": "configuration file (default: %(default)s)",
    }

    s = sub.add_parser("serve", help="run the daemon (what kdumpd.service runs)")
    s.add_argument("--config", **config_arg)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("status", help="the daemon's status; exit 0 loaded, 3 not loaded")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("reload", help="ask the daemon to reload the crash kernel")
    s.set_defaults(func=cmd_reload)

    s = sub.add_parser("unload", help="ask the daemon to unload the crash kernel")
    s.add_argument(
        "--local", action="store_true", help="unload directly with the syscall, without the daemon"
    )
    s.set_defaults(func=cmd_unload)

    s = sub.add_parser("test", help="crash the machine on purpose to prove that capture works")
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.set_defaults(func=cmd_test)

    s = sub.add_parser("check", help="validate the config and the reservation, load nothing")
    s.add_argument("--config", **config_arg)
    s.add_argument(
        "--target",
        action="store_true",
        help="also check that the target is reachable and writable: an ssh login or an NFS "
        "mount, and a file written there (uses the network)",
    )
    s.set_defaults(func=cmd_check)

    s = sub.add_parser(
        "target-setup",
        help="make the ssh key if missing and install it on the configured ssh:// target",
    )
    s.add_argument("--config", **config_arg)
    s.set_defaults(func=cmd_target_setup)

    s = sub.add_parser(
        "target-check",
        help="check the target as check --target does and record the verdict for the daemon "
        "(what kdumpd-target-check.service runs)",
    )
    s.add_argument("--config", **config_arg)
    s.add_argument("--run-dir", default=str(RUN_DIR), help="where the daemon reads the verdict")
    s.set_defaults(func=cmd_target_check)

    s = sub.add_parser(
        "crashkernel",
        help="this machine's crashkernel= reservation, or what a crashkernel= value reserves",
    )
    s.add_argument("--memory", metavar="SIZE", help="RAM size to evaluate VALUE against")
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--set",
        action="store_true",
        help="write crashkernel=VALUE (default: the recommended value) where the boot "
        "loader reads it; a reboot applies it",
    )
    s.add_argument(
        "--force",
        action="store_true",
        help="with --set: also when crashkernel= is set already in a file kdumpd does not own",
    )
    s.add_argument("value", nargs="?", metavar="VALUE", help="e.g. 2G-64G:256M,64G-:512M")
    s.set_defaults(func=cmd_crashkernel)

    s = sub.add_parser("capture", help="in the crash kernel: save the dump, then the final action")
    s.add_argument("--config", **config_arg)
    s.set_defaults(func=cmd_capture)

    s = sub.add_parser("dumps", help="list saved dumps")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_dumps)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except UserError as e:
        print(f"kdumpd {args.command}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    return rc


if __name__ == "__main__":
    sys.exit(main())
