"""Does the installed makedumpfile support the kernel it will dump: with the versions
Debian ships."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdumpd import skew

# The first line of `makedumpfile -v`, and the string in the binary, as released.
DEBIAN_12 = b"makedumpfile: version 1.7.2 (released on 20 Oct 2022)"
DEBIAN_13 = b"makedumpfile: version 1.7.6 (released on 23 Oct 2024)"
DEVEL = b"makedumpfile: version 1.7.9++ (released on 20 Apr 2026)"


def binary(version_line: bytes) -> bytes:
    """A makedumpfile as compiled: the version line among other strings and code."""
    return b"\x7fELF\x02\x01\x01" + b"\0" * 4000 + version_line + b"\n\0lzo\tenabled\n\0"


@pytest.mark.parametrize(
    ("release", "version"),
    [
        ("6.1.0-26-amd64", (6, 1, 0)),
        ("6.12.57+deb13-amd64", (6, 12, 57)),
        ("6.12.38+deb12-amd64", (6, 12, 38)),
        ("5.10.0-30-amd64", (5, 10, 0)),
        ("6.10-rc1", (6, 10, 0)),  # strtol reads no digits from "rc1"
        ("6.18.44-fc-v657", (6, 18, 44)),
    ],
)
def test_kernel_releases_read_as_makedumpfile_reads_them(
    release: str, version: skew.Version
) -> None:
    assert skew.kernel_version(release) == version


def test_makedumpfile_versions() -> None:
    assert skew.parse_version(binary(DEBIAN_12)) == (1, 7, 2)
    assert skew.parse_version(DEBIAN_13 + b"\nlzo\tenabled\n") == (1, 7, 6)
    assert skew.parse_version(binary(DEVEL)) == (1, 7, 9)
    assert skew.parse_version(b"\x7fELF no version here") is None


def test_debian_12_makedumpfile_does_not_support_debian_12_kernels() -> None:
    for release in ("6.1.0-26-amd64", "6.12.38+deb12-amd64"):
        message = skew.warning((1, 7, 2), release)
        assert "makedumpfile 1.7.2 supports kernels up to 6.0.1" in message
        assert f"kernel {release} is newer" in message
    assert "1.7.3 or later supports it" in skew.warning((1, 7, 2), "6.1.0-26-amd64")
    assert "1.7.7 or later supports it" in skew.warning((1, 7, 2), "6.12.38+deb12-amd64")


def test_debian_13_makedumpfile_and_its_kernel() -> None:
    message = skew.warning((1, 7, 6), "6.12.57+deb13-amd64")
    assert "makedumpfile 1.7.6 supports kernels up to 6.11.4" in message
    assert "1.7.7 or later" in message


def test_supported_pairs_say_nothing() -> None:
    assert skew.warning((1, 7, 2), "6.0.1") == ""  # LATEST_VERSION itself is supported
    assert skew.warning((1, 7, 2), "5.10.0-30-amd64") == ""  # Debian 11's kernel
    assert skew.warning((1, 7, 7), "6.12.57+deb13-amd64") == ""
    assert skew.warning((1, 7, 2), "6.0.2") != ""


def test_a_build_between_releases_is_bounded_by_the_next_one() -> None:
    assert skew.warning((1, 5, 9), "4.9.0-19-amd64") != ""  # older than 1.6.0's 4.5.3
    assert skew.warning((1, 5, 9), "4.4.0") == ""


def test_a_makedumpfile_newer_than_the_table_or_none_gets_no_warning() -> None:
    assert skew.warning((1, 8, 0), "7.5.0") == ""
    assert skew.warning(None, "6.1.0-26-amd64") == ""
    assert "no release up to makedumpfile 1.7.9 supports it yet" in skew.warning((1, 7, 9), "7.1.0")


def test_the_table_only_rises() -> None:
    releases = sorted(skew.LATEST_VERSION)
    latest = [skew.LATEST_VERSION[r] for r in releases]
    assert latest == sorted(latest) and len(set(latest)) == len(latest)


def test_the_installed_binary_is_found_as_capture_finds_it(tmp_path: Path) -> None:
    assert skew.installed_version(tmp_path) is None
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/makedumpfile").write_bytes(binary(DEBIAN_12))
    assert skew.installed_version(tmp_path) == (1, 7, 2)
    (tmp_path / "usr/sbin").mkdir()
    (tmp_path / "usr/sbin/makedumpfile").write_bytes(binary(DEVEL))
    assert skew.installed_version(tmp_path) == (1, 7, 9)  # /usr/sbin comes first on PATH


def test_threads_only_from_the_release_that_fixed_their_data_race() -> None:
    assert not skew.threads_safe(None)
    assert not skew.threads_safe((1, 7, 2))  # Debian 12
    assert not skew.threads_safe((1, 7, 7))
    assert skew.threads_safe((1, 7, 8)) and skew.threads_safe((1, 8, 0))
    assert skew.threads_refusal((1, 7, 2)).startswith("makedumpfile 1.7.2; before 1.7.8 ")
    assert skew.threads_refusal(None).startswith("no makedumpfile version found; ")
