"""What an ELF program needs to run: its interpreter and the libraries it names.

The answer `ldd` gives, read from the file instead of running the dynamic loader (which
would run code from the file, and only for this machine's architecture). Mirrors the
kernel's and glibc's view: PT_INTERP names the loader, PT_DYNAMIC's DT_NEEDED entries
name libraries, DT_RUNPATH/DT_RPATH add directories ($ORIGIN is the file's own).
"""

from __future__ import annotations

import glob
import struct
from dataclasses import dataclass
from pathlib import Path

PT_LOAD = 1
PT_DYNAMIC = 2
PT_INTERP = 3
DT_NULL = 0
DT_NEEDED = 1
DT_STRTAB = 5
DT_RPATH = 15
DT_RUNPATH = 29

# Where glibc looks after the cache, for both 64-bit layouts.
DEFAULT_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib")


class ElfError(ValueError):
    pass


@dataclass(frozen=True)
class Dynamic:
    interpreter: str  # "" for a static program or a shared library
    needed: tuple[str, ...]
    search: tuple[str, ...]  # DT_RUNPATH, or DT_RPATH without one, unexpanded


def dynamic(data: bytes) -> Dynamic | None:
    """The dynamic-linking facts of an ELF file; None when it is not ELF."""
    if data[:4] != b"\x7fELF":
        return None
    if len(data) < 0x40 or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise ElfError("truncated or unknown ELF header")
    wide = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if wide:
        (phoff,) = struct.unpack_from(end + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
        phdr, dyn = end + "IIQQQQQQ", end + "qQ"
    else:
        (phoff,) = struct.unpack_from(end + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x2A)
        phdr, dyn = end + "IIIIIIII", end + "iI"
    loads: list[tuple[int, int, int]] = []  # vaddr, filesz, offset
    interpreter, dynamic_at, dynamic_size = "", -1, 0
    for i in range(phnum):
        at = phoff + i * phentsize
        if at + struct.calcsize(phdr) > len(data):
            raise ElfError("program headers run past the end of the file")
        fields = struct.unpack_from(phdr, data, at)
        if wide:
            p_type, _, offset, vaddr, _, filesz, _, _ = fields
        else:
            p_type, offset, vaddr, _, filesz, _, _, _ = fields
        if p_type == PT_LOAD:
            loads.append((vaddr, filesz, offset))
        elif p_type == PT_INTERP:
            interpreter = data[offset : offset + filesz].split(b"\0", 1)[0].decode()
        elif p_type == PT_DYNAMIC:
            dynamic_at, dynamic_size = offset, filesz
    if dynamic_at < 0:
        return Dynamic(interpreter, (), ())
    entries: list[tuple[int, int]] = []
    step = struct.calcsize(dyn)
    for at in range(dynamic_at, min(dynamic_at + dynamic_size, len(data) - step + 1), step):
        tag, value = struct.unpack_from(dyn, data, at)
        if tag == DT_NULL:
            break
        entries.append((tag, value))

    def file_offset(vaddr: int) -> int:
        for start, size, offset in loads:
            if start <= vaddr < start + size:
                return vaddr - start + offset
        raise ElfError(f"address {vaddr:#x} is in no loaded segment")

    strtab = next((file_offset(v) for t, v in entries if t == DT_STRTAB), -1)
    if strtab < 0:
        return Dynamic(interpreter, (), ())

    def string(index: int) -> str:
        start = strtab + index
        return data[start : data.index(b"\0", start)].decode()

    needed = tuple(string(v) for t, v in entries if t == DT_NEEDED)
    runpath = [string(v) for t, v in entries if t == DT_RUNPATH]
    rpath = [string(v) for t, v in entries if t == DT_RPATH]
    search = tuple(d for p in (runpath or rpath) for d in p.split(":") if d)
    return Dynamic(interpreter, needed, search)


def library_dirs(sysroot: Path) -> tuple[str, ...]:
    """The directories ld.so.conf names (with its include lines), then glibc's defaults."""
    dirs: list[str] = []

    def read(conf: Path) -> None:
        try:
            lines = conf.read_text().splitlines()
        except OSError:
            return
        for line in lines:
            words = line.split("#", 1)[0].split()
            if words[:1] == ["include"] and len(words) == 2:
                pattern = words[1] if words[1].startswith("/") else f"/etc/{words[1]}"
                for inc in sorted(glob.glob(str(sysroot) + pattern)):
                    read(Path(inc))
            elif len(words) == 1 and words[0].startswith("/") and words[0] not in dirs:
                dirs.append(words[0])

    read(sysroot / "etc/ld.so.conf")
    return tuple(dirs) + tuple(d for d in DEFAULT_DIRS if d not in dirs)
