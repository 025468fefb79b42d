"""Helper for macros.local-build: Fedora's pyproject macros, simplified.

Used only by packaging/build-rpm.sh on a Debian machine, where Debian's
Python would install into /usr/local or /usr/lib/python3/dist-packages;
this installs into Fedora's paths instead.
"""

import importlib
import sys
from pathlib import Path


def install(buildroot: str, sitelib: str, bindir: str, *wheels: str) -> None:
    from installer import install as install_wheel
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    scheme = {
        "purelib": sitelib,
        "platlib": sitelib,
        "scripts": bindir,
        "data": "/usr",
        "headers": "/usr/include",
    }
    dest = SchemeDictionaryDestination(
        scheme, interpreter="/usr/bin/python3", script_kind="posix", destdir=buildroot
    )
    for wheel in wheels:
        with WheelFile.open(Path(wheel)) as source:
            install_wheel(source, dest, {"INSTALLER": b"rpm\n"})


def save_files(buildroot: str, sitelib: str, bindir: str, out: str, *args: str) -> None:
    """List the named top-level modules, the dist-info and the scripts."""
    root = Path(buildroot)
    site = root / sitelib.lstrip("/")
    lines = []
    for name in (a for a in args if not a.startswith("-")):
        if (site / name).is_dir():
            lines.append(f"{sitelib}/{name}/")
        elif (site / f"{name}.py").is_file():
            lines.append(f"{sitelib}/{name}.py")
        else:
            sys.exit(f"pyproject_save_files: module {name!r} not installed")
    for info in sorted(site.glob("*.dist-info")):
        lines.append(f"{sitelib}/{info.name}/")
        record = (info / "RECORD").read_text().splitlines()
        for entry in record:
            path = (info.parent / entry.split(",")[0]).resolve()
            if path.parent == (root / bindir.lstrip("/")).resolve():
                lines.append(f"{bindir}/{path.name}")
    Path(out).write_text("".join(line + "\n" for line in lines))


def check_import(files: str, sitelib: str) -> None:
    """Import each top-level module listed by save_files."""
    for line in Path(files).read_text().splitlines():
        if line.startswith(sitelib + "/") and not line.endswith(".dist-info/"):
            name = line[len(sitelib) + 1 :].rstrip("/").removesuffix(".py")
            print(f"Check import: {name}")
            importlib.import_module(name)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "install":
        install(*rest)
    elif command == "save-files":
        save_files(*rest)
    elif command == "check-import":
        check_import(*rest)
    else:
        sys.exit(f"unknown command {command!r}")
