"""Does a file still match what its package installed? Read from a sysroot.

Debian's dpkg keeps the md5 of every file a package installed in
/var/lib/dpkg/info/<package>.md5sums ("<md5>  boot/vmlinuz-6.1.0-28-amd64", the path
without its leading slash). Reading the kernel packages' lists is much faster than
`dpkg -S`, and a kernel is only ever in one of them.
"""

from __future__ import annotations

from pathlib import Path

from kdumpd import digests
from kdumpd.kernel_image import Data


class Modified(ValueError):
    """The file differs from what its package installed."""


def dpkg_md5(sysroot: Path, path: Path) -> tuple[str, str] | None:
    """(package, md5) from the linux-image package that installed `path`, if one did."""
    try:
        relative = path.resolve().relative_to(sysroot.resolve())
    except ValueError:
        return None
    entry = b"  " + str(relative).encode() + b"\n"
    for md5sums in sorted((sysroot / "var/lib/dpkg/info").glob("linux-image-*.md5sums")):
        text = md5sums.read_bytes()
        at = text.find(entry)
        while at >= 0 and not (at == 32 or (at > 32 and text[at - 33] == ord("\n"))):
            at = text.find(entry, at + 1)
        if at >= 0:
            package = md5sums.name.removesuffix(".md5sums").split(":")[0]
            return package, text[at - 32 : at].decode("ascii")
    return None


def reinstall(package: str) -> str:
    return f"reinstall it with apt-get install --reinstall {package}"


def check(sysroot: Path, path: Path, data: Data) -> None:
    """Raise Modified when `data`, read from `path`, is not what the package installed."""
    known = dpkg_md5(sysroot, path)
    if known is None:
        return
    package, md5 = known
    actual = digests.md5(data, usedforsecurity=False).hexdigest()
    if actual != md5:
        raise Modified(
            f"its md5 {actual} is not the {md5} that {package} installed "
            f"(/var/lib/dpkg/info/{package}.md5sums): the file was changed or damaged; "
            + reinstall(package)
        )
