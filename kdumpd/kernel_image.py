"""Is a kernel image whole? Checked before kexec_file_load, which frees the loaded crash
kernel before it reads the new one.

The kernel's own checks are thin: bzImage64_probe and bzImage64_load
(arch/x86/kernel/kexec-bzimage64.c) read the header and require only the setup sectors, so
an image cut in half loads and fails at crash time. Here the x86 boot header
(Documentation/arch/x86/boot.rst) is checked against the file:

- the file holds the setup sectors and `syssize` paragraphs that the header announces
  (arch/x86/boot/tools/build.c writes exactly that much; a signature may follow);
- up to Linux 6.14, build.c's CRC-32 over those bytes (commit 9c54baab4401 dropped it in
  6.15) matches: this catches any changed byte;
- the compressed payload (payload_offset, payload_length) ends as its format says it must
  and announces an uncompressed size the kernel's init_size can hold. The payload is not
  decompressed: for Debian's xz kernel that would cost 0.5 s and a 32 MiB dictionary on every
  reload, and the CRC above (or the package's checksum) already covers the content.

Each architecture's format is one function in CHECKS. On arm64 kexec_file_load takes only
an uncompressed Image (arch/arm64/kernel/kexec_image.c: image_probe wants its magic), and
Debian's vmlinuz there is a gzip-compressed Image, a kernel built with CONFIG_EFI_ZBOOT an
EFI zboot image: arm64_image() unpacks both as kexec-tools does. The loader does not hand
that Image to the syscall yet: no arm64 guest has booted a crash kernel from kdumpd.
"""

from __future__ import annotations

import lzma
import mmap
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

Data = bytes | mmap.mmap


class BadImage(ValueError):
    """The image would load but not boot; the message says why."""


_SETUP_SECTS = 0x1F1  # u8; 0 means 4
_SYSSIZE = 0x1F4  # u32, in 16-byte paragraphs
_BOOT_FLAG = 0x1FE  # u16 0xAA55
_HEADER = 0x202  # "HdrS"
_VERSION = 0x206  # u16 boot protocol version
_KERNEL_VERSION = 0x20E  # u16 pointer (minus 0x200) to "6.1.0-28-amd64 (...) #1 ..."
_PAYLOAD = 0x248  # u32 payload_offset, u32 payload_length; protocol >= 2.08
_INIT_SIZE = 0x260  # u32; protocol >= 2.10
_HEADER_END = 0x264
_SETUP_MIN = 5 * 512  # build.c: SETUP_SECT_MIN; the PE header lies within
_MIN_PROTOCOL = 0x20C  # bzImage64_probe: "Must be at least protocol version 2.12"
_LAST_CRC_RELEASE = (6, 14)


def _u16(data: Data, at: int) -> int:
    return int(struct.unpack_from("<H", data, at)[0])


def _u32(data: Data, at: int) -> int:
    return int(struct.unpack_from("<I", data, at)[0])


def _looks_like(data: Data, otherwise: str = "no x86 boot header ('HdrS' at 0x202)") -> str:
    """What a file that is not the image expected seems to be, for the refusal."""
    if len(data) >= _HEADER + 4 and data[_HEADER : _HEADER + 4] == b"HdrS":
        return "an x86 bzImage"
    if len(data) >= 0x40 and data[0x38:0x3C] == b"ARM\x64":
        return "an arm64 Image"
    if data[:2] == b"MZ" and data[4:8] == b"zimg":
        return "an EFI zboot image"
    if data[:4] == b"\x7fELF":
        return "an ELF file (an uncompressed vmlinux, not the bzImage boot loaders take)"
    if data[:2] in (b"\x1f\x8b", b"\x1f\x9e"):
        return "a gzip file"
    return otherwise


def _release(data: Data) -> tuple[int, int] | None:
    """Major and minor of the release the header names (as images.kernel_version reads it)."""
    start = _u16(data, _KERNEL_VERSION) + 0x200
    if start == 0x200 or start + 8 > len(data):
        return None
    found = re.match(rb"(\d+)\.(\d+)", data[start : start + 8])
    return (int(found[1]), int(found[2])) if found else None


def _pe_signature_fields(data: Data) -> tuple[int, int] | None:
    """Offsets of the PE CheckSum and certificate table entry, which signing (sbsign,
    pesign) writes, when the image has the EFI stub's PE header."""
    if data[:2] != b"MZ":
        return None
    pe = _u32(data, 0x3C)
    optional = pe + 0x18
    if optional + 0x98 > _SETUP_MIN or data[pe : pe + 4] != b"PE\0\0":
        return None
    directories = optional + (0x70 if _u16(data, optional) == 0x20B else 0x60)
    return optional + 0x40, directories + 0x20


def _build_crc(data: Data, end: int, signature: tuple[int, int] | None) -> int:
    """build.c's CRC-32 over the image before its last 4 bytes, as the image was built:
    from 0xffffffff, not inverted at the end, with the fields signing writes still 0."""
    head = bytearray(data[:_SETUP_MIN])
    if signature:
        checksum, certificates = signature
        head[checksum : checksum + 4] = bytes(4)
        head[certificates : certificates + 8] = bytes(8)
    crc = zlib.crc32(data[_SETUP_MIN : end - 4], zlib.crc32(head))
    return crc ^ 0xFFFFFFFF


def check_bzimage(data: Data) -> None:
    if len(data) < _HEADER_END or data[_HEADER : _HEADER + 4] != b"HdrS":
        raise BadImage(f"it is not an x86 bzImage: {_looks_like(data)}")
    if _u16(data, _BOOT_FLAG) != 0xAA55:
        raise BadImage("it is not an x86 bzImage: no boot flag 0xAA55 at 0x1fe")
    protocol = _u16(data, _VERSION)
    if protocol < _MIN_PROTOCOL:
        raise BadImage(
            f"its boot protocol {protocol >> 8}.{protocol & 0xFF:02} is older than 2.12, "
            "the oldest kexec_file_load can load"
        )
    setup = ((data[_SETUP_SECTS] or 4) + 1) * 512
    end = setup + _u32(data, _SYSSIZE) * 16
    if len(data) < max(end, _SETUP_MIN):
        raise BadImage(
            f"it is truncated: its header says {end} bytes ({setup} of setup code and "
            f"{end - setup} of kernel), the file has {len(data)}"
        )
    signature = _pe_signature_fields(data)
    if signature:
        table, table_size = struct.unpack_from("<II", data, signature[1])
        if table + table_size > len(data):
            raise BadImage(
                f"its signature is cut: the PE certificate table ends at {table + table_size}"
                f", the file has {len(data)} bytes"
            )
    release = _release(data)
    if release and release <= _LAST_CRC_RELEASE:
        stored, computed = _u32(data, end - 4), _build_crc(data, end, signature)
        if stored != computed:
            raise BadImage(
                f"it is damaged: the CRC-32 of its first {end - 4} bytes is {computed:08x}, "
                f"the image says {stored:08x}"
            )
    offset, length = struct.unpack_from("<II", data, _PAYLOAD)
    start, stop = setup + offset, setup + offset + length
    if length < 8 or stop > end:
        raise BadImage(
            f"its compressed kernel ({length} bytes at {start}) does not lie within the "
            f"{end} bytes the header announces"
        )
    _check_payload(data[start:stop], _u32(data, _INIT_SIZE))


def _check_payload(payload: bytes, init_size: int) -> None:
    """arch/x86/boot/compressed/Makefile: the stream, then (scripts/Makefile.lib
    size_append) its uncompressed size as a u32; gzip's own trailer ends in that size."""
    size = _u32(payload, len(payload) - 4)
    found = next((v for magic, v in _PAYLOADS.items() if payload.startswith(magic)), None)
    if found is None:
        raise BadImage(f"its compressed kernel starts with {payload[:6].hex()}, no known format")
    name, check = found
    # header.S: INIT_SIZE is at least the decompressed size plus room to decompress in place.
    if not 0 < size <= init_size:
        raise BadImage(
            f"its {name} kernel claims to unpack to {size} bytes, not 1 to {init_size} (the "
            "header's init_size): the end of the file is damaged"
        )
    try:
        check(payload if name == "gzip" else payload[:-4], size)
    except (struct.error, IndexError):
        raise BadImage(f"its {name} kernel is cut short") from None


def xz_index(stream: Data) -> tuple[list[tuple[int, int]], int]:
    """The index of an xz stream that ends at the end of `stream` (.xz file format 1.0.4):
    each block's unpadded and uncompressed size, and where the index starts. The footer
    and the index are checked against their CRC32s."""
    flags = stream[6:8]
    footer = bytes(stream[-12:])
    if footer[10:] != b"YZ" or footer[8:10] != flags or _u32(footer, 0) != zlib.crc32(footer[4:10]):
        raise BadImage("its xz stream does not end in a stream footer: it is cut or damaged")
    index_size = (_u32(footer, 4) + 1) * 4
    index_start = len(stream) - 12 - index_size
    index = bytes(stream[index_start : index_start + index_size])
    if (
        index_start < 12
        or index[:1] != b"\0"
        or _u32(index, index_size - 4) != zlib.crc32(index[:-4])
    ):
        raise BadImage("its xz index is damaged")
    count, at = _vli(index, 1)
    records = []
    for _ in range(count):
        unpadded, at = _vli(index, at)
        uncompressed, at = _vli(index, at)
        records.append((unpadded, uncompressed))
    return records, index_start


def _xz(stream: bytes, size: int) -> None:
    """The stream header, each block header and the index with their CRC32s, and the
    sizes the index lists add up to the stream and to `size`."""
    if _u32(stream, 8) != zlib.crc32(stream[6:8]):
        raise BadImage("its xz stream header is damaged")
    records, index_start = xz_index(stream)
    block, unpacked = 12, 0
    for unpadded, uncompressed in records:
        header_size = (stream[block] + 1) * 4
        if _u32(stream, block + header_size - 4) != zlib.crc32(
            stream[block : block + header_size - 4]
        ):
            raise BadImage(f"the header of its xz block at {block} is damaged")
        block += (unpadded + 3) & ~3
        unpacked += uncompressed
    if block != index_start:
        raise BadImage("its xz blocks do not add up to the index: the stream is damaged")
    if unpacked & 0xFFFFFFFF != size:
        raise BadImage(f"its xz stream unpacks to {unpacked} bytes, the kernel says {size}")


def _vli(data: bytes, at: int) -> tuple[int, int]:
    """An xz variable-length integer and the offset after it."""
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise BadImage("its xz index is damaged")


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_COMPRESSED = 2  # Block_Type: 0 raw, 1 RLE, 2 compressed (3 is reserved)


@dataclass(frozen=True)
class ZstdFrame:
    content_size: int | None  # Frame_Content_Size, when the header has it
    blocks: list[tuple[int, int]]  # Block_Type and Block_Size of each block
    end: int  # the offset after the frame


def zstd_frame(stream: Data, at: int) -> ZstdFrame:
    """RFC 8878: the zstd frame at `at`, its blocks walked by their headers to the last one,
    then the content checksum when the frame header announces it."""
    descriptor = stream[at + 4]
    if descriptor & 0x08:
        raise BadImage("its zstd frame header is damaged (reserved bit set)")
    single = descriptor >> 5 & 1
    at += 5 + (not single) + (0, 1, 2, 4)[descriptor & 3]
    content = (single, 2, 4, 8)[descriptor >> 6]
    declared = None
    if content:
        declared = int.from_bytes(stream[at : at + content], "little") + (content == 2) * 256
    at += content
    blocks = []
    while True:
        header = int.from_bytes(stream[at : at + 3], "little")
        kind, length = header >> 1 & 3, header >> 3
        if kind == 3 or len(stream) < at + 3:
            raise BadImage(f"its zstd block at {at} is damaged")
        blocks.append((kind, length))
        at += 3 + (1 if kind == 1 else length)
        if header & 1:
            break
    return ZstdFrame(declared, blocks, at + 4 * (descriptor >> 2 & 1))


def _zstd(stream: bytes, size: int) -> None:
    """One frame, and nothing after it."""
    frame = zstd_frame(stream, 0)
    if frame.content_size is not None and frame.content_size & 0xFFFFFFFF != size:
        raise BadImage(
            f"its zstd frame unpacks to {frame.content_size} bytes, the kernel says {size}"
        )
    if frame.end != len(stream):
        raise BadImage(
            f"its zstd frame ends at {frame.end} of {len(stream)} bytes: it is cut or damaged"
        )


def _lz4(stream: bytes, size: int) -> None:
    """lz4 legacy frames (lib/decompress_unlz4.c): chunks of a u32 length and data, which
    must end exactly at the end of the stream."""
    at = 4
    while at < len(stream):
        length = _u32(stream, at)
        at += 4 + (0 if length == 0x184C2102 else length)
    if at != len(stream):
        raise BadImage("its lz4 chunks run past the end: it is cut or damaged")


def _gzip(stream: bytes, size: int) -> None:
    """RFC 1952 header; the trailer's CRC32 needs the whole stream decompressed, and its
    ISIZE is the size checked above."""
    if stream[2] != 8 or stream[3] & 0xE0:
        raise BadImage("its gzip header is damaged")


def _magic_only(stream: bytes, size: int) -> None:
    """bzip2, lzma and lzo: beyond the magic and the size, only decompression could tell."""


_PAYLOADS: dict[bytes, tuple[str, Callable[[bytes, int], None]]] = {
    b"\xfd7zXZ\x00": ("xz", _xz),
    ZSTD_MAGIC: ("zstd", _zstd),
    b"\x1f\x8b": ("gzip", _gzip),
    b"\x02\x21\x4c\x18": ("lz4", _lz4),
    b"BZh": ("bzip2", _magic_only),
    b"\x5d\x00\x00": ("lzma", _magic_only),
    b"\x89LZO": ("lzo", _magic_only),
}

# --- arm64 -----------------------------------------------------------------------------
# The Image header (Documentation/arch/arm64/booting.rst; kexec-tools'
# kexec/arch/arm64/image-header.h): code0/code1, u64 text_offset, u64 image_size (the
# kernel's effective size, bss included), u64 flags, three reserved u64, "ARM\x64" at 0x38.
_ARM64_IMAGE_SIZE = 0x10
_ARM64_MAGIC_AT = 0x38
_ARM64_MAGIC = b"ARM\x64"
_ARM64_HEADER_END = 0x40
# An EFI zboot image (drivers/firmware/efi/libstub/zboot-header.S; kexec-tools'
# struct linux_pe_zboot_header): "MZ", "zimg", u32 payload_offset, u32 payload_size, two
# reserved u32, then the compression's name, NUL-padded.
_ZBOOT_TYPE = b"zimg"
_ZBOOT_HEADER_END = 0x20
ARM64_IMAGE_MAX = 256 << 20  # Debian's arm64 Image is about 40 MiB; a bound, not a guess


def _gunzip(stream: bytes, what: str) -> bytes:
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # a gzip member, CRC checked
    try:
        image = inflate.decompress(stream, ARM64_IMAGE_MAX)
    except zlib.error as e:
        raise BadImage(f"its {what} is damaged: {e}") from None
    if inflate.unconsumed_tail:
        raise BadImage(f"its {what} unpacks to more than {ARM64_IMAGE_MAX >> 20} MiB")
    if not inflate.eof:
        raise BadImage(f"its {what} is truncated: the stream ends before its trailer")
    return image


def _unlzma(stream: bytes, what: str) -> bytes:
    unpack = lzma.LZMADecompressor(lzma.FORMAT_ALONE)
    try:
        image = unpack.decompress(stream, ARM64_IMAGE_MAX)
    except lzma.LZMAError as e:
        raise BadImage(f"its {what} is damaged: {e}") from None
    if not unpack.eof and not unpack.needs_input:
        raise BadImage(f"its {what} unpacks to more than {ARM64_IMAGE_MAX >> 20} MiB")
    return image


_ZBOOT_UNPACK: dict[str, Callable[[bytes, str], bytes]] = {"gzip": _gunzip, "lzma": _unlzma}


def _zboot_payload(data: Data) -> bytes:
    if len(data) < _ZBOOT_HEADER_END:
        raise BadImage(f"it is truncated: {len(data)} bytes, less than an EFI zboot header")
    offset, size = struct.unpack_from("<II", data, 8)
    method = bytes(data[24:32]).rstrip(b"\0").decode("ascii", "replace")
    if offset + size > len(data):
        raise BadImage(
            f"it is truncated: its EFI zboot header puts {size} bytes of {method} at "
            f"{offset}, the file has {len(data)}"
        )
    unpack = _ZBOOT_UNPACK.get(method)
    if unpack is None:  # zstd: Python's standard library has no decoder before 3.14
        raise BadImage(f"its EFI zboot payload is compressed with {method!r}, not gzip or lzma")
    return unpack(bytes(data[offset : offset + size]), f"EFI zboot {method} payload")


def arm64_image(data: Data) -> bytes:
    """The uncompressed Image kexec_file_load takes on arm64, from an Image, a gzip file
    holding one (Debian's vmlinuz) or an EFI zboot image (as kexec-tools' pez_prepare
    unpacks it); BadImage when it is none of them or is damaged."""
    if data[:2] == b"\x1f\x8b":
        image = _gunzip(bytes(data), "gzip stream")
    elif data[:2] == b"MZ" and data[4:8] == _ZBOOT_TYPE:
        image = _zboot_payload(data)
    else:
        image = bytes(data)
    if (
        len(image) < _ARM64_HEADER_END
        or image[_ARM64_MAGIC_AT : _ARM64_HEADER_END - 4] != _ARM64_MAGIC
    ):
        no_magic = "no arm64 Image magic ('ARM\\x64' at 0x38)"
        raise BadImage(f"it is not an arm64 Image: {_looks_like(image, no_magic)}")
    if struct.unpack_from("<Q", image, _ARM64_IMAGE_SIZE)[0] == 0:
        raise BadImage("it is an arm64 Image from before Linux 3.17 (image_size 0)")
    return image


def check_arm64(data: Data) -> None:
    arm64_image(data)


# One function per architecture's image format; a machine missing here is not checked.
CHECKS: dict[str, Callable[[Data], None]] = {"x86_64": check_bzimage, "aarch64": check_arm64}


def check(data: Data, machine: str) -> None:
    """Raise BadImage when this image, loaded on `machine`, could not boot."""
    checker = CHECKS.get(machine)
    if checker:
        checker(data)
