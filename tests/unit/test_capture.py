"""Capture logic that needs no kernel: naming, retention, space, makedumpfile, metadata,
the panic message, the VMCOREINFO note, and listing dumps."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest

from kdumpd import capture, config, dumps, remote, vmcore

# Real text from a Debian 12 kernel (6.1) after `echo c > /proc/sysrq-trigger`.
SYSRQ_DMESG = """\
[   25.014345] sysrq: Trigger a crash
[   25.015010] Kernel panic - not syncing: sysrq triggered crash
[   25.015632] CPU: 1 PID: 512 Comm: sh Not tainted 6.1.0-28-amd64 #1  Debian 6.1.119-1
[   25.016532] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1
[   25.017311] Call Trace:
[   25.017565]  <TASK>
[   25.017803]  dump_stack_lvl+0x44/0x5c
[   25.018162]  panic+0x118/0x2ed
"""
OOPS_DMESG = """\
[  102.331221] BUG: kernel NULL pointer dereference, address: 0000000000000000
[  102.331887] #PF: supervisor write access in kernel mode
[  102.332421] Oops: 0002 [#1] PREEMPT SMP NOPTI
[  102.335121] Kernel panic - not syncing: Fatal exception
"""


def test_panic_message_from_real_dmesg() -> None:
    assert vmcore.panic_message(SYSRQ_DMESG) == "sysrq triggered crash"
    assert vmcore.panic_message(OOPS_DMESG) == "Fatal exception"
    assert vmcore.panic_message(OOPS_DMESG.replace("Kernel panic", "x")) == (
        "BUG: kernel NULL pointer dereference, address: 0000000000000000"
    )
    assert vmcore.panic_message("[    0.000000] Linux version 6.1.0\n") == ""


def _elf_with_vmcoreinfo(info: bytes) -> bytes:
    name = b"VMCOREINFO\0"
    note = struct.pack("<III", len(name), len(info), 0) + name.ljust(12, b"\0")
    note += info.ljust((len(info) + 3) // 4 * 4, b"\0")
    other = struct.pack("<III", 5, 4, 1) + b"CORE\0".ljust(8, b"\0") + b"\0" * 4
    notes = other + note
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", ehdr, 32, 64)  # e_phoff
    struct.pack_into("<HH", ehdr, 54, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 120, 0, 0, len(notes), len(notes), 0)
    return bytes(ehdr) + phdr + notes


def test_vmcoreinfo_note() -> None:
    core = _elf_with_vmcoreinfo(b"OSRELEASE=6.1.0-28-amd64\nPAGESIZE=4096\n")
    info = vmcore.vmcoreinfo(io.BytesIO(core))
    assert info["OSRELEASE"] == "6.1.0-28-amd64" and info["PAGESIZE"] == "4096"
    assert vmcore.vmcoreinfo(io.BytesIO(b"not an elf file" * 10)) == {}


def test_folder_name() -> None:
    assert capture.folder_name(1795740000.5, "6.1.0-28-amd64") == "2026-11-27-004000-6.1.0-28-amd64"


def _dump(root: Path, name: str, usec: int, complete: bool = True) -> dumps.Dump:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / (dumps.VMCORE if complete else dumps.INCOMPLETE)).write_bytes(b"KDUMP   " + b"x" * 8)
    (folder / dumps.METADATA).write_text(
        json.dumps(
            {
                "time_usec": usec,
                "kernel_version": "6.1.0-28-amd64",
                "panic_message": "sysrq triggered crash",
                "error": "" if complete else "disk full",
            }
        )
    )
    return dumps.read(folder)


def test_retention_keeps_the_newest(tmp_path: Path) -> None:
    existing = [_dump(tmp_path, f"d{i}", usec=i * 1000) for i in (3, 1, 2, 5, 4)]
    victims = capture.retention_victims(existing, keep=3)
    # with the new dump, three remain: d4, d5 and the new one
    assert sorted(v.name for v in victims) == ["d1", "d2", "d3"]
    assert capture.retention_victims(existing, keep=0) == []
    assert capture.retention_victims(existing, keep=6) == []
    assert [v.name for v in capture.retention_victims(existing, keep=5)] == ["d1"]


def test_free_space() -> None:
    capture.check_space(64 << 20, 64 << 20, Path("/var/crash"))
    with pytest.raises(
        capture.CaptureError,
        match=r"only 63 MiB free on /var/crash, below "
        r"min_free_space \(64 MiB\)",
    ):
        capture.check_space(63 << 20, 64 << 20, Path("/var/crash"))


def test_makedumpfile_command_and_compression_fallback() -> None:
    cfg = config.Config(compression="zstd", dump_level=17, makedumpfile_args=("--num-threads=1",))
    debian12 = capture.supported_compressions(
        "makedumpfile: version 1.7.2 (released on 20 Oct 2022)\nlzo\tenabled\nsnappy\tdisabled\n"
        "zstd\tdisabled\n"
    )
    assert debian12 == {"lzo", "zlib", "none"}
    command, used = capture.makedumpfile_command(cfg, Path("/proc/vmcore"), Path("/d/v"), debian12)
    assert used == "lzo"
    assert command == [
        "makedumpfile",
        "-l",
        "-d",
        "17",
        "--message-level",
        "7",
        "--num-threads=1",
        "/proc/vmcore",
        "/d/v",
    ]
    command, used = capture.makedumpfile_command(cfg, Path("/p"), Path("/d"), debian12 | {"zstd"})
    assert used == "zstd" and command[1] == "-z"
    command, used = capture.makedumpfile_command(
        config.Config(compression="none"), Path("/p"), Path("/d"), debian12
    )
    assert used == "none" and command[1] == "-d"


def test_makedumpfile_gets_a_thread_per_crash_kernel_cpu() -> None:
    every = {"lzo", "zlib", "none"}

    def extra(cpus: int, args: tuple[str, ...] = ()) -> list[str]:
        """The words after makedumpfile -l -d 31 --message-level 7, before the files."""
        cfg = config.Config(compression="lzo", makedumpfile_args=args)
        command, _ = capture.makedumpfile_command(cfg, Path("/p"), Path("/d"), every, cpus)
        assert command[:6] == ["makedumpfile", "-l", "-d", "31", "--message-level", "7"]
        return command[6:-2]

    assert extra(1) == []
    assert extra(4) == ["--num-threads", "4"]
    assert extra(4, ("--num-threads=2",)) == ["--num-threads=2"]  # the admin's choice
    assert extra(4, ("-E",)) == ["-E"]  # ELF output is written with one thread


def test_metadata() -> None:
    meta = capture.metadata(
        started=100.0,
        finished=112.25,
        kernel_version="6.1.0-28-amd64",
        panic="sysrq triggered crash",
        cfg=config.Config(),
        compression="lzo",
        size=123,
        error="",
    )
    assert meta == {
        "time_usec": 100_000_000,
        "kernel_version": "6.1.0-28-amd64",
        "panic_message": "sysrq triggered crash",
        "dump_level": 31,
        "compression": "lzo",
        "size_bytes": 123,
        "duration_s": 12.25,
        "complete": True,
        "error": "",
    }


def test_scan_lists_complete_and_incomplete(tmp_path: Path) -> None:
    _dump(tmp_path, "b", usec=2_000_000, complete=False)
    _dump(tmp_path, "a", usec=1_000_000)
    (tmp_path / "unrelated").mkdir()
    found = dumps.scan(tmp_path)
    assert [d.path.name for d in found] == ["a", "b"]
    assert found[0].complete and found[0].size_bytes == 16 and found[0].error == ""
    assert not found[1].complete and found[1].error == "disk full"
    assert found[0].as_dict()["PanicMessage"] == "sysrq triggered crash"
    assert set(found[0].as_dict()) == set(dumps.FIELD_TYPES)
    assert dumps.scan(tmp_path / "missing") == []


def test_announce_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kdumpd.journal._JOURNAL_SOCKET", str(tmp_path / "no-journal"))
    state = tmp_path / "state" / "announced"
    signalled: list[dumps.Dump] = []
    _dump(tmp_path / "crash", "a", usec=1)
    capture.announce_new(tmp_path / "crash", state, signalled.append)
    assert "a crash dump was saved" in capsys.readouterr().err
    assert [d.path.name for d in signalled] == ["a"]
    capture.announce_new(tmp_path / "crash", state, signalled.append)
    assert capsys.readouterr().err == ""
    assert len(signalled) == 1
    _dump(tmp_path / "crash", "b", usec=2, complete=False)
    capture.announce_new(tmp_path / "crash", state, signalled.append)
    assert "could not be saved" in capsys.readouterr().err
    assert [(d.path.name, d.complete) for d in signalled] == [("a", True), ("b", False)]


FSTAB = """\
# <file system> <mount point> <type> <options> <dump> <pass>
/dev/vda / ext4 rw 0 1
/var/lib/small.img /var/crash ext4 loop,nofail 0 2
/dev/vdb /srv ext4 defaults 0 2
UUID=1234 /srv/dumps\\040here xfs noauto 0 2
proc /proc proc defaults 0 0
"""


def test_mounts_needed_for_the_dump_path() -> None:
    assert capture.mounts_needed(Path("/var/crash"), FSTAB, {"/", "/proc"}) == ["/var/crash"]
    assert capture.mounts_needed(Path("/var/crash"), FSTAB, {"/", "/var/crash"}) == []
    assert capture.mounts_needed(Path("/var/crashes"), FSTAB, {"/"}) == []
    assert capture.mounts_needed(Path("/srv/dumps here/x"), FSTAB, {"/"}) == [
        "/srv",
        "/srv/dumps here",
    ]


def test_progress_lines_are_thinned_messages_are_not() -> None:
    now = [100.0]
    shown = capture.ProgressFilter(clock=lambda: now[0])
    progress = "Copying data                     : [ 34.2 %] /           eta: 3s"
    assert shown.show(progress)  # the first one
    now[0] += 1
    assert not shown.show(progress.replace("34.2", "40.0"))
    assert shown.show("The dumpfile is saved to /var/crash/x/vmcore.incomplete.")
    now[0] += capture.PROGRESS_EVERY
    assert shown.show("Excluding unnecessary pages        : [100.0 %] |")


def test_run_makedumpfile_streams_and_keeps_messages(capsys: pytest.CaptureFixture[str]) -> None:
    # what makedumpfile prints when the disk fills: progress on stderr (redrawn with \r),
    # the error on stdout
    script = (
        "for i in 1 2 3 4 5; do printf 'Copying data   : [ %s0.0 %%] /  eta: 1s\\r' $i >&2; done;"
        " echo 'write_and_check_space: No space left on device';"
        " echo 'makedumpfile Failed.'; exit 1"
    )
    rc, messages = capture.run_makedumpfile(["sh", "-c", script])
    assert rc == 1
    assert messages == [
        "write_and_check_space: No space left on device",
        "makedumpfile Failed.",
    ]
    console = capsys.readouterr().out.splitlines()
    assert console[0].startswith("Copying data   : [ 10.0 %]")
    assert sum("Copying data" in line for line in console) == 1  # the rest within 5 s
    assert console[-1] == "makedumpfile Failed."


FAKE_MAKEDUMPFILE = """#!/bin/sh
case "$1" in
  -v) printf 'makedumpfile: version %s (released on 20 Oct 2022)\\n' "${FAKE_VERSION:-1.7.2}"
      printf 'lzo\\tenabled\\nzstd\\tdisabled\\n' ;;
  --dump-dmesg) cp "$FAKE_DMESG" "$3" ;;
  *) flat=""
     for target; do [ "$target" = -F ] && flat=1; done
     printf 'Copying data   : [ 50.0 %%] /  eta: 1s\\n' >&2
     if [ -n "$flat" ]; then  # -F: the dump on stdout, every message on stderr
       printf 'FLAT'
       [ -z "$FAKE_MIDWAY" ] || { echo 'makedumpfile Failed.' >&2; exit 1; }
       printf 'TENED'; echo 'makedumpfile Completed.' >&2; exit 0
     fi
     if [ -n "$FAKE_FULL" ]; then
       printf 'KDU' > "$target"; echo 'write_cache: No space left on device'
       echo 'makedumpfile Failed.'; exit 1
     fi
     printf 'KDUMP   ' > "$target"; echo 'makedumpfile Completed.' ;;
esac
"""


@pytest.fixture
def fake_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> capture.Capture:
    """A crash kernel's view: /proc/vmcore with its VMCOREINFO, and makedumpfile on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "makedumpfile").write_text(FAKE_MAKEDUMPFILE)
    (bin_dir / "makedumpfile").chmod(0o755)
    (tmp_path / "dmesg").write_text(SYSRQ_DMESG)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_DMESG", str(tmp_path / "dmesg"))
    source = tmp_path / "vmcore"
    source.write_bytes(_elf_with_vmcoreinfo(b"OSRELEASE=6.1.0-28-amd64\n"))
    cfg = config.Config(dump_path=tmp_path / "crash", min_free_space=0)
    return capture.Capture(cfg, source)


@pytest.mark.parametrize(
    ("cpus", "version", "threads"),
    [(1, "1.7.8", ""), (2, "1.7.8", " --num-threads 2"), (16, "1.7.9", " --num-threads 4"),
     (4, "1.7.2", "")],
)  # fmt: skip
def test_makedumpfile_threads_follow_the_crash_kernels_cpus_and_makedumpfiles_version(
    fake_crash: capture.Capture, monkeypatch: pytest.MonkeyPatch, cpus: int, version: str,
    threads: str,
) -> None:  # fmt: skip
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setenv("FAKE_VERSION", version)
    assert fake_crash.run()
    (folder,) = fake_crash.cfg.dump_path.iterdir()
    log = (folder / dumps.CAPTURE_LOG).read_text()
    assert f"kdumpd: makedumpfile -l -d 31 --message-level 7{threads} /" in log
    refused = "no makedumpfile threads of kdumpd's: makedumpfile 1.7.2; before 1.7.8"
    assert (refused in log) == (cpus > 1 and version == "1.7.2")


def test_capture_saves_the_dump_with_its_log(fake_crash: capture.Capture) -> None:
    assert fake_crash.run()
    (folder,) = fake_crash.cfg.dump_path.iterdir()
    assert folder.name.endswith("-6.1.0-28-amd64")
    assert (folder / dumps.VMCORE).read_bytes() == b"KDUMP   "
    assert not (folder / dumps.INCOMPLETE).exists()
    meta = json.loads((folder / dumps.METADATA).read_text())
    assert meta["panic_message"] == "sysrq triggered crash" and meta["complete"]
    log = (folder / dumps.CAPTURE_LOG).read_text()
    for line in (
        "kdumpd: saving the dump of 6.1.0-28-amd64",
        "makedumpfile Completed.",
        "kdumpd: dump saved",
    ):
        assert line in log
    assert "Copying data" not in log  # progress is for the console only


def test_capture_on_a_full_disk_leaves_no_vmcore_and_says_why(
    fake_crash: capture.Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FULL", "1")
    assert not fake_crash.run()
    (folder,) = fake_crash.cfg.dump_path.iterdir()
    assert not (folder / dumps.VMCORE).exists() and not (folder / dumps.INCOMPLETE).exists()
    why = "makedumpfile failed: the dump file system is full"
    assert why in json.loads((folder / dumps.METADATA).read_text())["error"]
    assert f"kdumpd: capture FAILED: {why}" in (folder / dumps.CAPTURE_LOG).read_text()


# ssh as the capture runs it: options, the destination, "--" and a shell command, which
# runs here (the "server" is a folder of this machine).
FAKE_SSH = """#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    -p|-o) shift 2 ;;
    -O) exit 0 ;;
    --) shift; break ;;
    *) shift ;;
  esac
done
if [ -n "$FAKE_REFUSED" ]; then
  echo 'ssh: connect to host 192.0.2.1 port 22: Connection refused' >&2; exit 255
fi
case "$1" in
  *vmcore.incomplete*) if [ -n "$FAKE_SERVER_FULL" ]; then
      cat > /dev/null; echo 'cat: write error: No space left on device' >&2; exit 1
    fi ;;
esac
exec sh -c "$1"
"""


@pytest.fixture
def sending(fake_crash: capture.Capture, tmp_path: Path) -> capture.Capture:
    """The capture with an ssh target whose "server" is tmp_path/server."""
    from kdumpd import remote, target

    ssh = tmp_path / "bin/ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    (tmp_path / "server/dumps").mkdir(parents=True)
    t = target.SshTarget("kdump", "dumps.example", 22, str(tmp_path / "server/dumps"))
    sender = remote.Ssh(t, "192.0.2.1", tmp_path / "key", tmp_path / "known", "host-0123abcd",
                        str(ssh), tmp_path / "control")  # fmt: skip
    return capture.Capture(fake_crash.cfg, fake_crash.source, sender)


def _server(tmp_path: Path) -> Path:
    return tmp_path / "server/dumps/host-0123abcd"


def test_a_dump_sent_over_ssh_is_whole_there_and_recorded_here(
    sending: capture.Capture, tmp_path: Path
) -> None:
    assert sending.run()
    (there,) = _server(tmp_path).iterdir()
    assert (there / dumps.VMCORE).read_bytes() == b"FLATTENED"  # makedumpfile -F's stream
    assert not (there / dumps.INCOMPLETE).exists()
    assert "sysrq triggered crash" in (there / dumps.DMESG).read_text()
    assert "makedumpfile Completed." in (there / dumps.CAPTURE_LOG).read_text()
    (here,) = sending.cfg.dump_path.iterdir()
    assert here.name == there.name and not (here / dumps.VMCORE).exists()
    meta = json.loads((here / dumps.METADATA).read_text())
    assert json.loads((there / dumps.METADATA).read_text()) == meta
    url = f"ssh://kdump@dumps.example{there}"
    assert meta["location"] == url and meta["complete"] and meta["size_bytes"] == 9
    (listed,) = dumps.scan(sending.cfg.dump_path)
    assert (listed.location, listed.complete, listed.size_bytes) == (url, True, 9)
    assert listed.panic_message == "sysrq triggered crash" and listed.error == ""
    log = (here / dumps.CAPTURE_LOG).read_text()
    assert f"kdumpd: saving the dump of 6.1.0-28-amd64 to {url}" in log
    assert "makedumpfile -l -d 31 --message-level 7 -F /" in log


@pytest.mark.parametrize(
    ("fault", "why", "left_there"),
    [
        (
            "FAKE_REFUSED",
            "dumps.example (192.0.2.1): connection refused (no ssh server on port 22?)",
            None,
        ),
        (
            "FAKE_SERVER_FULL",
            "dumps.example (192.0.2.1): cat: write error: No space left on device",
            set(),
        ),
        ("FAKE_MIDWAY", "makedumpfile failed: makedumpfile Failed.", {dumps.INCOMPLETE}),
    ],
)
def test_a_dump_that_did_not_arrive_is_never_named_vmcore_and_says_why_here(
    sending: capture.Capture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    why: str,
    left_there: set[str] | None,
) -> None:
    monkeypatch.setenv(fault, "1")
    assert not sending.run()
    folders = list(_server(tmp_path).iterdir()) if _server(tmp_path).exists() else []
    if left_there is None:
        assert folders == []
    else:
        (there,) = folders
        assert left_there <= {p.name for p in there.iterdir()}
        assert not (there / dumps.VMCORE).exists()
    (listed,) = dumps.scan(sending.cfg.dump_path)
    assert not listed.complete and listed.location.startswith("ssh://kdump@dumps.example/")
    assert why in listed.error, listed.error


@pytest.fixture
def to_nfs(fake_crash: capture.Capture, tmp_path: Path) -> capture.Capture:
    """The capture with an nfs target, its export "mounted" at tmp_path/server/dumps."""
    from kdumpd import remote, target

    (tmp_path / "server/dumps").mkdir(parents=True)
    t = target.NfsTarget("dumps.example", "/srv/dumps")
    export = tmp_path / "server/dumps"
    sender = remote.Nfs(t, "192.0.2.1", "host-0123abcd", export, lambda p: p == export)
    return capture.Capture(fake_crash.cfg, fake_crash.source, sender)


def test_a_dump_written_to_nfs_is_whole_there_and_recorded_here(
    to_nfs: capture.Capture, tmp_path: Path
) -> None:
    assert to_nfs.run()
    (there,) = _server(tmp_path).iterdir()
    assert (there / dumps.VMCORE).read_bytes() == b"KDUMP   "  # makedumpfile's own format
    assert not (there / dumps.INCOMPLETE).exists()
    assert "sysrq triggered crash" in (there / dumps.DMESG).read_text()
    assert "makedumpfile Completed." in (there / dumps.CAPTURE_LOG).read_text()
    (here,) = to_nfs.cfg.dump_path.iterdir()
    assert here.name == there.name and not (here / dumps.VMCORE).exists()
    meta = json.loads((here / dumps.METADATA).read_text())
    assert json.loads((there / dumps.METADATA).read_text()) == meta
    url = f"nfs://dumps.example/srv/dumps/host-0123abcd/{there.name}"
    assert meta["location"] == url and meta["complete"] and meta["size_bytes"] == 8
    (listed,) = dumps.scan(to_nfs.cfg.dump_path)
    assert (listed.location, listed.complete) == (url, True)
    assert f"{there}/vmcore.incomplete" in (here / dumps.CAPTURE_LOG).read_text()


def test_a_full_export_leaves_no_vmcore_there_and_says_why_here(
    to_nfs: capture.Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FULL", "1")
    assert not to_nfs.run()
    (there,) = _server(tmp_path).iterdir()
    assert not (there / dumps.VMCORE).exists() and not (there / dumps.INCOMPLETE).exists()
    (listed,) = dumps.scan(to_nfs.cfg.dump_path)
    assert not listed.complete and listed.location.startswith("nfs://dumps.example/srv/dumps/")
    url = f"nfs://dumps.example/srv/dumps/host-0123abcd/{there.name}"
    assert f"makedumpfile failed: the dump file system is full ({url})" == listed.error


def test_an_export_that_cannot_be_written_fails_the_capture_with_the_host(
    to_nfs: capture.Capture, tmp_path: Path
) -> None:
    _server(tmp_path).write_text("")  # where the machine's folder would be
    assert not to_nfs.run()
    (listed,) = dumps.scan(to_nfs.cfg.dump_path)
    assert listed.error == "dumps.example (192.0.2.1):/srv/dumps: File exists"


def test_an_export_that_is_not_mounted_is_not_written_to(to_nfs: capture.Capture) -> None:
    import dataclasses

    assert isinstance(to_nfs.sender, remote.Nfs)
    to_nfs.sender = dataclasses.replace(to_nfs.sender, mounted=lambda p: False)
    assert not to_nfs.run()
    (listed,) = dumps.scan(to_nfs.cfg.dump_path)
    assert listed.error == "dumps.example (192.0.2.1): /srv/dumps is not mounted"


def test_an_export_failing_under_the_dump_is_in_the_record(
    to_nfs: capture.Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A soft mount's server gone: EIO from the file system, not a CaptureError."""
    from kdumpd import safefile

    real = safefile.fsync

    def eio(path: Path) -> None:
        if path.name == dumps.INCOMPLETE:
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(safefile, "fsync", eio)
    assert not to_nfs.run()
    (listed,) = dumps.scan(to_nfs.cfg.dump_path)
    assert not listed.complete and listed.location.startswith("nfs://dumps.example/")
    assert listed.error == f"{listed.location}: Input/output error"
    (there,) = _server(tmp_path).iterdir()
    assert not (there / dumps.VMCORE).exists()


SENDERS = ["sending", "to_nfs"]


@pytest.mark.parametrize("sender", SENDERS)
def test_retention_applies_on_the_target(
    request: pytest.FixtureRequest, sender: str, tmp_path: Path
) -> None:
    import dataclasses

    sending: capture.Capture = request.getfixturevalue(sender)
    old = ["2026-01-01-000000-6.1.0-28-amd64", "2026-02-01-000000-6.1.0-28-amd64",
           "2026-03-01-000000-6.1.0-28-amd64", "notes"]  # fmt: skip
    for name in old:
        (_server(tmp_path) / name).mkdir(parents=True)
    sending.cfg = dataclasses.replace(sending.cfg, keep_dumps=2)
    assert sending.run()
    left = sorted(p.name for p in _server(tmp_path).iterdir())
    assert left[0] == "2026-03-01-000000-6.1.0-28-amd64" and left[2] == "notes", left


def _url(c: capture.Capture) -> str:
    return "ssh://kdump@dumps.example/" if isinstance(c.sender, remote.Ssh) else "nfs://dumps."


@pytest.mark.parametrize("sender", SENDERS)
def test_min_free_space_is_the_target_s(
    request: pytest.FixtureRequest, sender: str, tmp_path: Path
) -> None:
    import dataclasses

    sending: capture.Capture = request.getfixturevalue(sender)
    sending.cfg = dataclasses.replace(sending.cfg, min_free_space=1 << 62)
    assert not sending.run()
    assert "below min_free_space" in sending.error and _url(sending) in sending.error
    (there,) = _server(tmp_path).iterdir()
    assert {p.name for p in there.iterdir()} == {dumps.DMESG, dumps.METADATA, dumps.CAPTURE_LOG}


@pytest.mark.parametrize("sender", SENDERS)
def test_a_way_that_does_not_come_up_is_in_the_record(
    request: pytest.FixtureRequest, sender: str
) -> None:
    from kdumpd import network

    sending: capture.Capture = request.getfixturevalue(sender)

    def no_link() -> None:
        raise network.NoRoute("eth0 has no link within 30 s")

    sending.network_up = no_link
    assert not sending.run()
    (listed,) = dumps.scan(sending.cfg.dump_path)
    assert not listed.complete and listed.error == "eth0 has no link within 30 s"
    assert listed.location.startswith(_url(sending))


def test_the_host_key_is_looked_up_by_the_name_ssh_recorded_it_under(
    sending: capture.Capture,
) -> None:
    """ssh-copy-id (kdumpd target-setup) records [host]:port for a port other than 22."""
    import dataclasses

    ssh = sending.sender
    assert isinstance(ssh, remote.Ssh)
    assert ssh.host_key_name == "dumps.example"
    other = dataclasses.replace(ssh.target, port=2222)
    assert dataclasses.replace(ssh, target=other).host_key_name == "[dumps.example]:2222"
