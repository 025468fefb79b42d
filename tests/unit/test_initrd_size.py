"""How big an initrd is once the kernel unpacks it, read from the file without unpacking
it: an early uncompressed cpio, then a compressed main archive, as initramfs-tools and
dracut write them."""

from __future__ import annotations

import gzip
import lzma
import os
import random
import subprocess
from pathlib import Path

from kdumpd import cpio, images

# Programs and modules barely compress; random bytes not at all: 3 MiB, 24 zstd blocks.
PAYLOAD = random.Random(7).randbytes(3 << 20)
EARLY = cpio.archive({"kernel/x86/microcode/GenuineIntel.bin": cpio.regular(b"\x01" * 5000)})
MAIN = cpio.archive({"init": cpio.regular(b"#!/bin/sh\n", 0o755), "big": cpio.regular(PAYLOAD)})


def test_an_early_cpio_then_gzip_or_xz_unpacks_to_exactly_what_they_hold() -> None:
    assert images.unpacked_size(EARLY) == 5000
    for compressed in (gzip.compress(MAIN), lzma.compress(MAIN, check=lzma.CHECK_CRC32)):
        assert images.unpacked_size(EARLY + compressed) == 5000 + len(MAIN)
    # xz stream padding after the stream, as some tools write it
    assert images.unpacked_size(lzma.compress(MAIN) + bytes(8)) == len(MAIN)


def test_zstd_is_bounded_by_its_blocks(tmp_path: Path) -> None:
    """Streamed through a pipe, as mkinitramfs does, zstd writes no content size: each
    full block counts 128 KiB, which is what the tool puts in one."""
    streamed = subprocess.run(
        ["zstd", "-q", "-1", "-c"], input=MAIN, capture_output=True, check=True
    ).stdout
    size = images.unpacked_size(EARLY + streamed)
    assert size is not None and 5000 + len(MAIN) <= size <= 5000 + len(MAIN) + (128 << 10)
    (tmp_path / "main").write_bytes(MAIN)  # from a file the header says the size exactly
    subprocess.run(["zstd", "-q", "-1", str(tmp_path / "main")], check=True)
    assert images.unpacked_size((tmp_path / "main.zst").read_bytes()) == len(MAIN)


def test_formats_that_do_not_say_and_damaged_files_are_unknown(tmp_path: Path) -> None:
    assert images.unpacked_size(b"BZh91AY&SY" + os.urandom(100)) is None
    assert images.unpacked_size(EARLY[:200]) is None  # cut inside the cpio
    assert images.unpacked_size(lzma.compress(MAIN)[:-20]) is None  # no xz footer
    assert images.unpacked_size(b"\x1f\x8b fake initrd " * 4096) is None  # no real trailer
    assert images.initrd_unpacked(tmp_path / "missing") == 0
    (tmp_path / "initrd").write_bytes(EARLY + gzip.compress(MAIN))
    assert images.initrd_unpacked(tmp_path / "initrd") == 5000 + len(MAIN)
