"""Fixtures for the QEMU guest tests: the cached image, booted throwaway guests, packages."""

from __future__ import annotations

import struct
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from kdumpd.kernels import version_key

# Absolute imports, as the test modules use: one copy of each module, whatever pytest names us.
from tests.vm import debs
from tests.vm.guest import BootOptions, Guest, GuestFactory, derived_image
from tests.vm.image import TRIXIE, ImagePaths, ensure_image

VM_DIR = Path(__file__).parent
GUESTS = pytest.StashKey[list[Guest]]()


@pytest.hookimpl(tryfirst=True)  # before -m selection looks at the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if VM_DIR in item.path.parents:
            item.add_marker(pytest.mark.vm)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        # Guests of this test, and of its module when a module-scoped guest was used.
        module = item.getparent(pytest.Module)
        own: list[Guest] = item.stash.get(GUESTS, [])
        shared: list[Guest] = module.stash.get(GUESTS, []) if module is not None else []
        for g in own + shared:
            title = f"{g.name} console (last 60 lines of {g.console_log})"
            report.sections.append((title, g.console_tail()))
    return report


@pytest.fixture(scope="session")
def vm_image() -> ImagePaths:
    return ensure_image()


@pytest.fixture(scope="session")
def stock_image() -> ImagePaths:
    """The image with Debian's default initramfs (MODULES=most), as users have it."""
    return ensure_image(stock=True)


@pytest.fixture(scope="session")
def trixie_image() -> ImagePaths:
    """Debian 13, as debootstrap and linux-image-amd64 leave it (its default initramfs)."""
    return ensure_image(stock=True, suite=TRIXIE)


def _factory(
    default_image: ImagePaths, node: pytest.Item | pytest.Collector, workdir: Path, prefix: str
) -> tuple[GuestFactory, list[Guest]]:
    guests: list[Guest] = []
    node.stash[GUESTS] = guests

    def make(
        *,
        memory_mb: int = 1024,
        cpus: int = 2,
        maxcpus: int | None = None,
        append: str = "",
        reboot: bool = True,
        boot: bool = True,
        boot_timeout: float | None = None,
        extra_qemu_args: list[str] | None = None,
        image: ImagePaths | None = None,
    ) -> Guest:
        name = f"{prefix}{len(guests)}"
        opts = BootOptions(
            memory_mb=memory_mb,
            cpus=cpus,
            maxcpus=maxcpus,
            append=append,
            reboot=reboot,
            extra_qemu_args=extra_qemu_args or [],
        )
        g = Guest(image or default_image, workdir / name, name, opts)
        guests.append(g)
        g.start()
        if boot:
            g.wait_booted(boot_timeout)
            print(f"\n{name}: booted in {g.timings['since_start']:.1f}s ({append or 'no append'})")
        return g

    return make, guests


@pytest.fixture
def make_guest(
    vm_image: ImagePaths, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[GuestFactory]:
    """``make_guest(**boot options)`` -> a started, booted guest, killed at teardown."""
    make, guests = _factory(vm_image, request.node, tmp_path, "guest")
    try:
        yield make
    finally:
        for g in guests:
            g.close()


@pytest.fixture(scope="module")
def make_guest_module(
    vm_image: ImagePaths, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GuestFactory]:
    """Like ``make_guest``, for guests shared by the tests of one module."""
    workdir = tmp_path_factory.mktemp(request.node.name.removesuffix(".py"))
    make, guests = _factory(vm_image, request.node, workdir, "mguest")
    try:
        yield make
    finally:
        for g in guests:
            g.close()


@pytest.fixture(scope="session")
def kdumpd_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Debian package built from this tree."""
    from tests.vm.kdumpd_guest import build_deb  # the project's helper; needed only here

    return build_deb(tmp_path_factory.mktemp("deb"))


def kernel_release(vmlinuz: Path) -> str:
    """The release string of a bzImage, from its setup header (no need to boot or mount)."""
    data = vmlinuz.read_bytes()[:0x10000]
    (offset,) = struct.unpack_from("<H", data, 0x20E)
    return data[0x200 + offset :].split(b" ", 1)[0].decode()


@pytest.fixture(scope="session")
def second_kernel_deb(vm_image: ImagePaths) -> Path:
    """A newer Debian kernel package than the image's own, fetched once with apt-get download.

    Newer, because the tests install it and expect kdumpd's "latest" kernel choice to follow."""
    running = kernel_release(vm_image.kernel)
    abi = int(running.split("-")[1])  # 6.1.0-50-amd64 -> 50
    names = debs.search(r"^linux-image-6\.1\.0-[0-9]+-amd64$")
    abis = sorted(int(n.split("-")[3]) for n in names)  # linux-image-6.1.0-56-amd64 -> 56
    candidates = [f"linux-image-6.1.0-{n}-amd64" for n in abis if n > abi]
    if not candidates:
        pytest.fail(
            f"apt knows no Debian 6.1 kernel package newer than {running} "
            "(run apt-get update on the host)"
        )
    return debs.download(candidates[-1])


@pytest.fixture(scope="session")
def trixie_kernel_deb(trixie_image: ImagePaths) -> Path:
    """A newer Debian 13 kernel package than the trixie image's (trixie-security has one)."""
    running = kernel_release(trixie_image.kernel)  # 6.12.117+deb13-amd64

    names = debs.search(r"^linux-image-6\.12\.[0-9]+\+deb13-amd64$", TRIXIE)
    newer = [n for n in names if version_key(n) > version_key(f"linux-image-{running}")]
    if not newer:
        pytest.fail(f"apt knows no Debian 13 kernel package newer than {running}")
    return debs.download(max(newer, key=version_key), TRIXIE)


@pytest.fixture(scope="session")
def crash_hotplug_image(
    vm_image: ImagePaths, tmp_path_factory: pytest.TempPathFactory
) -> ImagePaths:
    """The image with Debian 12's newer kernel series installed (linux-image-6.12.*+deb12,
    from bookworm-security), whose crash_hotplug files exist: 6.1 has none. Made once
    (dpkg and update-initramfs take minutes under TCG), keyed by the package file."""
    names = debs.search(r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$")
    if not names:
        pytest.fail("apt knows no linux-image-6.12.*+deb12-amd64 (run apt-get update on the host)")
    deb = debs.download(max(names, key=version_key))

    def install(g: Guest) -> tuple[str, str]:
        g.install_deb(deb, timeout=1800)
        release = g.run("ls /lib/modules | grep '^6\\.12\\.'").stdout.strip()
        return f"/boot/vmlinuz-{release}", f"/boot/initrd.img-{release}"

    return derived_image(vm_image, f"with-{deb.stem}", install, tmp_path_factory.mktemp)
