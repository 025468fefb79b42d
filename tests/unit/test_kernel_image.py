"""Kernel images checked before they replace the loaded crash kernel: synthetic bzImages
laid out as the kernel's build.c writes them, around real xz and gzip streams."""

from __future__ import annotations

import hashlib
import lzma
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from kdumpd import images, kernel_image, packaged
from kdumpd.kernel_image import BadImage, check
from kdumpd.loader import snapshot
from tests.bzimage import SETUP, bzimage, gz, lz4_legacy, xz, zstd_raw

NO_CRC = "6.15.0-1-amd64"  # build.c's CRC-32 is gone since 6.15: only the payload tells

PAYLOADS: dict[str, Callable[[], bytes]] = {
    "xz": xz,
    "gzip": gz,
    "zstd": zstd_raw,
    "lz4": lz4_legacy,
}


def refused(data: bytes) -> str:
    with pytest.raises(BadImage) as e:
        check(data, "x86_64")
    return str(e.value)


@pytest.mark.parametrize("fmt", PAYLOADS)
@pytest.mark.parametrize("release", ["6.1.0-28-amd64", NO_CRC])
@pytest.mark.parametrize("signed", [False, True])
def test_an_intact_image_passes(fmt: str, release: str, signed: bool) -> None:
    check(bzimage(PAYLOADS[fmt](), release, signed=signed), "x86_64")


@pytest.mark.parametrize("fmt", PAYLOADS)
@pytest.mark.parametrize("release", ["6.1.0-28-amd64", NO_CRC])
@pytest.mark.parametrize("cut", ["half", 1, 4096])
def test_a_truncated_image_fails(fmt: str, release: str, cut: str | int) -> None:
    image = bzimage(PAYLOADS[fmt](), release)
    keep = len(image) // 2 if cut == "half" else len(image) - int(cut)
    assert f"it is truncated: its header says {len(image)} bytes" in refused(image[:keep])


def test_a_signed_image_cut_in_its_signature_fails() -> None:
    image = bzimage(xz(), signed=True)
    assert "its signature is cut" in refused(image[:-1])


def _flip(image: bytes, at: int) -> bytes:
    damaged = bytearray(image)
    damaged[at] ^= 0x40
    return bytes(damaged)


def _payload(image: bytes) -> tuple[int, int]:
    offset, length = struct.unpack_from("<II", image, 0x248)
    return SETUP + offset, SETUP + offset + length


@pytest.mark.parametrize("where", ["setup", "payload", "padding"])
def test_any_changed_byte_fails_the_crc_of_kernels_up_to_6_14(where: str) -> None:
    """Signed as Debian's are: signing rewrites header fields the CRC covers."""
    image = bzimage(xz(), signed=True)
    start, stop = _payload(image)
    at = {"setup": 0x300, "payload": (start + stop) // 2, "padding": stop + 2}[where]
    assert "it is damaged: the CRC-32 of its first" in refused(_flip(image, at))


@pytest.mark.parametrize(
    ("fmt", "from_end", "says"),
    [
        ("xz", 4 + 2, "does not end in a stream footer"),  # 'YZ'
        ("xz", 4 + 12, "footer"),  # its CRC32
        ("xz", 4 + 14, "its xz index is damaged"),
        ("xz", 1, "claims to unpack to"),  # the size the kernel reads
        ("xz", 2, "its xz stream unpacks to 65536 bytes, the kernel says"),
        ("zstd", 4 + 4 + (1 << 14) + 3, "its zstd frame ends at"),  # last block's size
        ("gzip", 1, "claims to unpack to"),  # ISIZE
    ],
)
def test_a_damaged_payload_end_fails_where_the_format_tells(
    fmt: str, from_end: int, says: str
) -> None:
    image = bzimage(PAYLOADS[fmt](), NO_CRC)
    _, stop = _payload(image)
    assert says in refused(_flip(image, stop - from_end))


def test_a_damaged_xz_block_header_fails() -> None:
    image = bzimage(xz(), NO_CRC)
    start, _ = _payload(image)
    assert "the header of its xz block at 12 is damaged" in refused(_flip(image, start + 13))


def test_a_zstd_block_header_running_past_the_end_fails() -> None:
    image = bzimage(zstd_raw(), NO_CRC)
    start, _ = _payload(image)
    assert "zstd" in refused(_flip(image, start + 6 + 1))  # first block's size


def test_what_the_payload_check_cannot_see() -> None:
    """Inside the compressed data only decompression could tell (it is not done: 0.5 s for
    Debian's xz kernel); kernels up to 6.14 have the CRC, packaged ones their md5."""
    image = bzimage(xz(), NO_CRC)
    start, stop = _payload(image)
    check(_flip(image, (start + stop) // 2), "x86_64")


def test_a_zeroed_end_fails() -> None:
    """What a crash during a write can leave: the size is right, the end is zeros."""
    image = bytearray(bzimage(xz(), NO_CRC))
    _, stop = _payload(bytes(image))
    image[stop - 64 : stop] = bytes(64)
    assert "claims to unpack to 0 bytes" in refused(bytes(image))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\x7fELF" + bytes(0x400), "an ELF file"),
        (bytes(0x38) + b"ARM\x64" + bytes(0x400), "an arm64 Image"),
        (b"MZ\0\0zimg" + bytes(0x400), "an EFI zboot image"),
        (b"#!/bin/sh\n" * 100, "no x86 boot header ('HdrS' at 0x202)"),
        (b"short", "no x86 boot header"),
    ],
)
def test_a_file_that_is_not_a_bzimage_fails_saying_what_it_is(data: bytes, says: str) -> None:
    assert refused(data).startswith(f"it is not an x86 bzImage: {says}")


def test_an_unknown_compression_fails() -> None:
    assert "no known format" in refused(bzimage(b"\0\1\2\3" * 16))


def test_an_old_boot_protocol_fails() -> None:
    image = bytearray(bzimage(xz()))
    struct.pack_into("<H", image, 0x206, 0x20A)
    assert "boot protocol 2.10 is older than 2.12" in refused(bytes(image))


# arm64: the Image header as Documentation/arch/arm64/booting.rst lays it out (and as
# Linux's arch/arm64/kernel/head.S writes it: an EFI "MZ" first, the magic at 0x38).


def arm64_image(size: int = 1 << 16, image_size: int | None = None) -> bytes:
    header = struct.pack(
        "<2sHI QQQ QQQ 4sI",
        b"MZ", 0, 0x14000000,  # "MZ" and a branch over the header
        0, image_size if image_size is not None else size + 4096, 0xA,  # text_offset, size, flags
        0, 0, 0, b"ARM\x64", 0x40,
    )  # fmt: skip
    return header + bytes(range(256)) * ((size - len(header)) // 256)


def zboot(payload: bytes, method: bytes = b"gzip") -> bytes:
    """drivers/firmware/efi/libstub/zboot-header.S: the payload follows a PE stub."""
    offset = 0x200
    header = struct.pack("<2sH4sII8s8s", b"MZ", 0, b"zimg", offset, len(payload), bytes(8), method)
    return header + bytes(offset - len(header)) + payload + bytes(64)


def arm64_refused(data: bytes) -> str:
    with pytest.raises(BadImage) as e:
        check(data, "aarch64")
    return str(e.value)


def test_arm64_images_plain_gzip_and_zboot_unpack_to_the_image() -> None:
    image = arm64_image()
    assert kernel_image.arm64_image(image) == image
    assert kernel_image.arm64_image(gz(image)) == image  # Debian's vmlinuz
    assert kernel_image.arm64_image(zboot(gz(image))) == image
    alone = lzma.compress(image, format=lzma.FORMAT_ALONE)  # Makefile.zboot's lzma
    assert kernel_image.arm64_image(zboot(alone, b"lzma")) == image
    check(gz(image), "aarch64")


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (gz(arm64_image())[:-100], "its gzip stream is truncated"),
        (gz(arm64_image())[:-4] + b"\0\0\0\0", "its gzip stream is damaged"),
        (zboot(gz(arm64_image()))[:-100], "it is truncated: its EFI zboot header puts"),
        (zboot(b"(zstd)", b"zstd"), "compressed with 'zstd', not gzip or lzma"),
        (gz(b"#!/bin/sh\n" * 100), "it is not an arm64 Image: no arm64 Image magic"),
        (bzimage(xz()), "it is not an arm64 Image: an x86 bzImage"),
        (arm64_image(image_size=0), "from before Linux 3.17"),
    ],
)
def test_a_bad_arm64_image_fails_saying_why(data: bytes, says: str) -> None:
    assert says in arm64_refused(data)


def test_an_arm64_image_that_unpacks_without_end_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kernel_image, "ARM64_IMAGE_MAX", 1 << 20)
    assert "unpacks to more than 1 MiB" in arm64_refused(gz(bytes(2 << 20)))
    alone = lzma.compress(bytes(2 << 20), format=lzma.FORMAT_ALONE)
    assert "unpacks to more than 1 MiB" in arm64_refused(zboot(alone, b"lzma"))


def test_machines_without_a_check_load_as_they_are() -> None:
    check(b"not a kernel", "riscv64")
    assert set(kernel_image.CHECKS) == {"x86_64", "aarch64"}


# The package manager's checksum, from a sysroot.

PACKAGE = "linux-image-6.1.0-28-amd64"


def _installed(root: Path, image: bytes, listed: bytes | None = None) -> Path:
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (root / "boot").mkdir()
    path = root / "boot/vmlinuz-6.1.0-28-amd64"
    path.write_bytes(image)
    md5 = hashlib.md5(listed if listed is not None else image).hexdigest()
    (info / "linux-image-6.0.0-1-amd64.md5sums").write_text(
        "0" * 32 + "  boot/vmlinuz-6.0.0-1-amd64\n"
    )
    (info / f"{PACKAGE}.md5sums").write_text(
        f"{'1' * 32}  lib/modules/6.1.0-28-amd64/boot/vmlinuz-6.1.0-28-amd64\n"
        f"{md5}  boot/vmlinuz-6.1.0-28-amd64\n"
    )
    return path


def test_the_package_that_installed_a_kernel_is_found(tmp_path: Path) -> None:
    image = bzimage(xz())
    path = _installed(tmp_path, image)
    assert packaged.dpkg_md5(tmp_path, path) == (PACKAGE, hashlib.md5(image).hexdigest())
    assert packaged.dpkg_md5(tmp_path, tmp_path / "boot/vmlinuz-custom") is None
    (tmp_path / "vmlinuz").symlink_to("boot/vmlinuz-6.1.0-28-amd64")
    assert packaged.dpkg_md5(tmp_path, tmp_path / "vmlinuz") is not None


def _unfit(root: Path, path: Path) -> str | None:
    kernel = snapshot(path)
    try:
        return images.unfit(kernel, None, "x86_64", root)
    finally:
        kernel.close()


def test_a_packaged_kernel_that_differs_from_its_md5_is_refused(tmp_path: Path) -> None:
    """Here the image itself is well formed (a kernel without build.c's CRC): only the
    package's checksum can tell."""
    good = bzimage(xz(), NO_CRC)
    start, stop = _payload(good)
    path = _installed(tmp_path, _flip(good, (start + stop) // 2), listed=good)
    reason = _unfit(tmp_path, path)
    assert reason is not None and reason.startswith(f"refusing to load {path}: its md5 ")
    assert f"that {PACKAGE} installed (/var/lib/dpkg/info/{PACKAGE}.md5sums)" in reason
    assert reason.endswith(f"apt-get install --reinstall {PACKAGE}")
    path.write_bytes(good)
    assert _unfit(tmp_path, path) is None


def test_a_truncated_packaged_kernel_names_the_package_to_reinstall(tmp_path: Path) -> None:
    image = bzimage(xz())
    path = _installed(tmp_path, image[: len(image) // 2], listed=image)
    reason = _unfit(tmp_path, path)
    assert reason is not None and "it is truncated" in reason and str(path) in reason
    assert reason.endswith(f"apt-get install --reinstall {PACKAGE}")


def test_an_empty_kernel_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vmlinuz"
    path.write_bytes(b"")
    assert _unfit(tmp_path, path) == f"refusing to load {path}: it is empty"
