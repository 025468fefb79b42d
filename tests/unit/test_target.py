"""Target URLs (kdumpd/target.py): what the SPEC allows, and words for what it does not;
the check, bounded, and its verdict for the daemon."""

import dataclasses
import json
from pathlib import Path

import pytest

from kdumpd import target
from kdumpd.target import NfsTarget, SshTarget


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("ssh://kdump@192.0.2.1/var/crash", SshTarget("kdump", "192.0.2.1", 22, "/var/crash")),
        (
            "ssh://root@Dumps.Example.org:2222/srv/d/",
            SshTarget("root", "dumps.example.org", 2222, "/srv/d"),
        ),
        ("ssh://k@[2001:db8::1]:22/x", SshTarget("k", "2001:db8::1", 22, "/x")),
        ("nfs://192.0.2.7/export/dumps", NfsTarget("192.0.2.7", "/export/dumps")),
        ("nfs://filer/export", NfsTarget("filer", "/export")),
    ],
)
def test_good_urls(url: str, parsed: target.Target) -> None:
    assert target.parse(url) == parsed


def test_the_url_is_given_back_in_its_plain_form() -> None:
    assert target.parse("ssh://k@[2001:db8::1]:22/x/").url == "ssh://k@[2001:db8::1]/x"
    assert target.parse("ssh://k@h:2222/x").url == "ssh://k@h:2222/x"
    assert target.parse("nfs://[2001:db8::2]/e").url == "nfs://[2001:db8::2]/e"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://h/x", "is not a target URL: ssh://USER@HOST[:PORT]/PATH or nfs://"),
        ("/var/crash", "is not a target URL"),
        ("ssh://h/x", "names no user"),
        ("ssh://@h/x", "names no user"),
        ("ssh://u;rm@h/x", "not a plain one"),
        ("ssh://u:secret@h/x", "carry no password: ssh logs in with the key in ssh_key"),
        ("ssh://u@h:99999/x", "the port must be a number from 1 to 65535"),
        ("ssh://u@h:0/x", "the port must be a number from 1 to 65535"),
        ("ssh://u@h:ssh/x", "the port must be a number"),
        ("ssh://u@/x", "names no host"),
        ("ssh://u@-bad-/x", "'-bad-' is not a host name or an IP address"),
        ("ssh://u@h_1/x", "is not a host name"),
        ("ssh://u@h", "names no folder on the host"),
        ("ssh://u@h/", "names no folder on the host"),
        ("ssh://u@h/a/../etc", "is not a plain absolute path"),
        ("ssh://u@h/x?y=1", "has no '?' or '#' part"),
        ("ssh://u@h/x#", "has no '?' or '#' part"),
        ("ssh://u@h/a b", "white space"),
        ("nfs://u@h/x", "an nfs:// target has no user and no port"),
        ("nfs://h:2049/x", "an nfs:// target has no user and no port"),
        ("nfs://h", "names no folder"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        target.parse(url)
    assert words in str(info.value)


SSH = SshTarget("kdump", "192.0.2.1", 2222, "/srv/dumps")
KEY = Path("/etc/kdumpd/id_ed25519")


def _said(options: list[str]) -> list[str]:
    pairs = list(zip(options[::2], options[1::2], strict=True))
    assert ("-p", "2222") in pairs
    return [v for k, v in pairs if k == "-o"]


def test_ssh_never_prompts_and_knows_the_host_from_kdumpd_s_file() -> None:
    said = _said(target.ssh_options(SSH, KEY))
    for needed in (
        f"IdentityFile={KEY}",
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/etc/kdumpd/known_hosts",
        f"ConnectTimeout={target.CONNECT_TIMEOUT_S}",
    ):
        assert needed in said


def test_first_contact_may_ask_and_records_the_host_key() -> None:
    """kdumpd target-setup: ssh-copy-id logs in with a password once."""
    said = _said(target.ssh_options(SSH, KEY, first_contact=True))
    assert "BatchMode=no" in said and "StrictHostKeyChecking=accept-new" in said
    assert "BatchMode=yes" not in said and "StrictHostKeyChecking=yes" not in said
    assert "UserKnownHostsFile=/etc/kdumpd/known_hosts" in said


@pytest.mark.parametrize(
    ("stderr", "words"),
    [
        (
            "kdump@192.0.2.1: Permission denied (publickey,password).",
            f"permission denied: the host does not accept {KEY} for kdump",
        ),
        ("Host key verification failed.", "its host key is not the one in /etc/kdumpd/known_hosts"),
        (
            "ssh: connect to host 192.0.2.1 port 2222: Connection refused",
            "connection refused (no ssh server on port 2222?)",
        ),
        ("ssh: connect to host 192.0.2.1 port 2222: Connection timed out", "no answer within 10 s"),
        ("ssh: connect to host 192.0.2.1 port 2222: No route to host", "no route to host"),
        ("ssh: Could not resolve hostname h: Name or service not known", "does not resolve"),
        ("\nsomething new\n\n", "something new"),
        ("", "it failed and said nothing"),
    ],
)
def test_ssh_s_failures_in_words(stderr: str, words: str) -> None:
    assert words in target.failure(SSH, KEY, stderr)


def test_a_probe_without_ssh_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    found = target.probe(SSH, KEY)
    assert not found.ok and found.message == "ssh is not installed (Debian: openssh-client)"


def test_a_probe_of_a_host_that_refuses_names_it(tmp_path: Path) -> None:
    """The real ssh, on loopback, at a port where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    t = SshTarget("kdump", "127.0.0.1", port, "/x")
    found = target.probe(t, tmp_path / "key", tmp_path / "known_hosts")
    assert not found.ok
    assert found.message == f"127.0.0.1: connection refused (no ssh server on port {port}?)"
    assert str(found) == f"target ssh://kdump@127.0.0.1:{port}/x: {found.message}"
    assert found.key == str(tmp_path / "key") and found.time_usec > 0


def test_a_check_that_does_not_end_is_killed_with_all_it_started(tmp_path: Path) -> None:
    """As mount.nfs under unshare's sh, or ssh's proxy: the grandchild goes too."""
    import os
    import time

    pid_file = tmp_path / "pid"
    script = f"sleep 300 & echo $! > {pid_file}; wait"
    t0 = time.monotonic()
    assert target._run_bounded(["sh", "-c", script], 1.0) is None
    assert time.monotonic() - t0 < 30
    grandchild = int(pid_file.read_text())
    for _ in range(100):  # reaped by init, at its pace
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"sleep {grandchild} outlived the check")


def test_a_check_that_ends_gives_what_it_said() -> None:
    done = target._run_bounded(["sh", "-c", "echo out; echo err >&2; exit 3"], 30)
    assert done is not None and (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


VERDICT = target.Verdict(SSH.url, str(KEY), False, "192.0.2.1: connection refused", 1)


def test_a_verdict_is_recalled_for_its_own_target_and_key_only(tmp_path: Path) -> None:
    path = tmp_path / target.VERDICT
    target.record(VERDICT, path)
    assert target.recall(path, SSH, KEY) == VERDICT
    assert target.recall(path, SSH, Path("/etc/kdumpd/other")) is None
    assert target.recall(path, SSH, None) == VERDICT  # for the way there, which no key changes
    assert target.recall(path, SshTarget("kdump", "192.0.2.1", 22, "/srv/dumps"), KEY) is None
    assert target.recall(path, SshTarget("kdump", "192.0.2.1", 22, "/srv/dumps"), None) is None
    nfs = NfsTarget("192.0.2.1", "/srv/dumps")
    target.record(target.Verdict(nfs.url, "", True, "reachable, writable, 5 MiB free"), path)
    recalled = target.recall(path, nfs, KEY)  # nfs uses no key: any will do
    assert recalled is not None and recalled.ok
    assert [p.name for p in tmp_path.iterdir()] == [target.VERDICT]  # no temporary left


def test_a_verdict_file_that_is_not_one_is_no_verdict(tmp_path: Path) -> None:
    """Never blocks, never reads without end, never raises."""
    import os

    path = tmp_path / target.VERDICT
    ok_is_a_string = json.dumps({**dataclasses.asdict(VERDICT), "ok": "false"}).encode()
    for content in (
        b"",
        b"{",
        b"[]",
        b'{"url": 1}',
        b'{"url": "x", "bogus": 1}',
        b"\xff" * 9,
        ok_is_a_string,
    ):
        path.write_bytes(content)
        assert target.recall(path, SSH, KEY) is None, content
    path.write_bytes(b" " * (1 << 20))
    assert target.recall(path, SSH, KEY) is None
    good = json.loads(json.dumps(dataclasses.asdict(VERDICT)))
    for route in ({"host": "192.0.2.1"}, [1], "eth0"):
        path.write_text(json.dumps({**good, "route": route}))
        assert target.recall(path, SSH, KEY) is None, route
    path.write_text(json.dumps({**good, "no_route": 5}))
    assert target.recall(path, SSH, KEY) is None
    path.unlink()
    assert target.recall(path, SSH, KEY) is None
    os.mkfifo(path)
    assert target.recall(path, SSH, KEY) is None
    path.unlink()
    path.symlink_to("/dev/zero")
    assert target.recall(path, SSH, KEY) is None


REACHABLE = dataclasses.replace(VERDICT, ok=True, message="reachable, writable, 5 MiB free")


@pytest.mark.parametrize(
    ("key_problem", "verdict", "asked", "words"),
    [
        ("kdumpd.yaml:2: ssh_key: /k: No such", None, 0, "warning: kdumpd.yaml:2: ssh_key: /k"),
        ("", None, 5, f"target {SSH.url}: not checked yet (kdumpd-target-check.service checks it)"),
        ("", VERDICT, 0, f"warning: target {SSH.url}: 192.0.2.1: connection refused warning:"),
        ("", REACHABLE, 1, f"target {SSH.url}: reachable, writable, 5 MiB free warning:"),
        # asked for after that check began: said to be the last one, not the answer
        ("", REACHABLE, 2, f"target {SSH.url}: reachable, writable, 5 MiB free (that was the last"),
    ],
)
def test_the_daemon_s_words_on_its_target(
    key_problem: str, verdict: target.Verdict | None, asked: int, words: str
) -> None:
    said = target.status_words(SSH, key_problem, verdict, asked, "warning: where they go")
    assert said.startswith(words), said
    assert said.endswith(" warning: where they go")


def test_what_a_server_prints_is_not_sent_on_as_terminal_escapes(tmp_path: Path) -> None:
    """The last line of a failing command comes from the server (ssh) or the kernel."""
    t = SshTarget("kdump", "127.0.0.1", 1, "/x")
    found = target.probe(t, tmp_path / "key", tmp_path / "known_hosts")
    assert found.message.isprintable()
    assert target._printable("disk \x1b[31mfull\x07") == "disk ?[31mfull?"
