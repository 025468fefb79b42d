"""Synthetic x86 bzImages: a boot header around a real compressed stream, laid out as
arch/x86/boot/tools/build.c writes them (setup sectors, syssize paragraphs, CRC-32 last),
optionally with a PE header and an appended signature as sbsign leaves them."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import struct
import zlib

SETUP = 5 * 512  # setup_sects 4
PE = 0x80
# What the payload unpacks to: 64 KiB, a quarter of it incompressible so that images are
# tens of KiB, as a fake machine's reservation tests want.
NOISE = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(512))
VMLINUX = NOISE + bytes(range(256)) * 192
SIGNATURE = b"\x30\x82 fake PKCS#7 " * 8


def xz(data: bytes = VMLINUX) -> bytes:
    """As scripts/xz_wrap.sh makes it: CRC32 check, x86 BCJ, LZMA2."""
    filters = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}]
    stream = lzma.compress(data, lzma.FORMAT_XZ, lzma.CHECK_CRC32, filters=filters)
    return stream + struct.pack("<I", len(data))  # size_append


def gz(data: bytes = VMLINUX) -> bytes:
    return gzip.compress(data, mtime=0)


def bzimage(
    payload: bytes,
    release: str = "6.1.0-28-amd64",
    efi: bool = True,
    signed: bool = False,
    xloadflags: int = 0x1 | 0x2,  # XLF_KERNEL_64, XLF_CAN_BE_LOADED_ABOVE_4G
    init_size: int = 1 << 24,
) -> bytes:
    setup = bytearray(SETUP)
    if efi:
        setup[0:2] = b"MZ"
        struct.pack_into("<I", setup, 0x3C, PE)
        setup[PE : PE + 4] = b"PE\0\0"
        struct.pack_into("<H", setup, PE + 0x18, 0x20B)  # PE32+
    setup[0x1F1] = 4
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    struct.pack_into("<H", setup, 0x20E, 0x400 - 0x200)
    text = f"{release} (builder@example) #1 SMP\0".encode()
    setup[0x400 : 0x400 + len(text)] = text
    setup[0x211] = 0x1  # LOADED_HIGH
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, 2047)
    offset = 0x40  # some decompressor code comes first
    struct.pack_into("<II", setup, 0x248, offset, len(payload))
    struct.pack_into("<I", setup, 0x260, init_size)
    kernel = b"\x90" * offset + payload
    syssize = ((len(kernel) + 15 + 4) // 16 + 1) & ~1  # build.c, CONFIG_EFI_STUB
    struct.pack_into("<I", setup, 0x1F4, syssize)
    image = bytes(setup) + kernel.ljust(syssize * 16 - 4, b"\0")
    image += struct.pack("<I", zlib.crc32(image) ^ 0xFFFFFFFF)
    if not signed:
        return image
    signed_image = bytearray(image + SIGNATURE)
    struct.pack_into("<I", signed_image, PE + 0x18 + 0x40, 0x1234567)  # CheckSum
    struct.pack_into("<II", signed_image, PE + 0x18 + 0x70 + 0x20, len(image), len(SIGNATURE))
    return bytes(signed_image)


def zstd_raw(data: bytes = VMLINUX, block: int = 1 << 14) -> bytes:
    """A zstd frame of raw blocks with a content checksum, as RFC 8878 lays it out (Python
    has no zstd compressor; the checker reads only the frame's structure)."""
    frame = bytearray(b"\x28\xb5\x2f\xfd\x04\x58")  # checksum flag, window descriptor
    chunks = [data[i : i + block] for i in range(0, len(data), block)]
    for n, chunk in enumerate(chunks):
        last = n == len(chunks) - 1
        frame += ((len(chunk) << 3) | last).to_bytes(3, "little") + chunk
    frame += b"\xc5\x5e\x1a\x77"  # the checksum's place
    return bytes(frame) + struct.pack("<I", len(data))


def lz4_legacy(data: bytes = VMLINUX) -> bytes:
    """lz4 -l's framing: magic, then chunks of a u32 length and the compressed bytes."""
    chunks = [data[:40000], data[40000:]]
    body = b"".join(struct.pack("<I", len(c)) + c for c in chunks)
    return b"\x02\x21\x4c\x18" + body + struct.pack("<I", len(data))
