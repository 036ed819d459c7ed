"""scripts/fetch-linux-guest.py's initramfs archives, without the Debian archive.

The virtio initramfs is the plain one plus ``lib/modules/*.ko`` after the same entries, so the plain
``initramfs.cpio`` (and its sha256 in earlier manifests) stays byte-identical; a cached guest
directory is checked against its manifest when present.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "fetch-linux-guest.py"


@pytest.fixture(scope="module")
def fetch() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_linux_guest", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _names(archive: bytes) -> list[str]:
    pos, out = 0, []
    while archive[pos : pos + 6] == b"070701":
        size, namesize = int(archive[pos + 54 : pos + 62], 16), int(archive[pos + 94 : pos + 102], 16)
        out.append(archive[pos + 110 : pos + 110 + namesize - 1].decode())
        data_at = pos + 110 + namesize + (-(110 + namesize) % 4)
        pos = data_at + size + (-size % 4)
    return out


def test_plain_archive_is_unchanged_by_the_modules_parameter(fetch: ModuleType) -> None:
    busybox = b"\x7fELF busybox stand-in" * 7
    plain = fetch.build_initramfs(busybox)
    assert fetch.build_initramfs(busybox, fetch.INIT_SCRIPT, None) == plain
    assert fetch.build_initramfs(busybox, fetch.INIT_SCRIPT, []) == plain
    assert _names(plain)[-1] == "TRAILER!!!" and "lib" not in _names(plain)
    assert fetch.busybox_from_cpio(plain) == busybox


def test_virtio_archive_adds_the_modules_in_load_order(fetch: ModuleType) -> None:
    busybox = b"bb" * 1001
    modules = [(name, name.encode() * 3) for _, name in fetch.VIRTIO_MODULES]
    archive = fetch.build_initramfs(busybox, fetch.VIRTIO_INIT_SCRIPT, modules)
    names = _names(archive)
    base = _names(fetch.build_initramfs(busybox))[:-1]
    assert names[: len(base)] == base
    assert names[len(base) :] == [
        "lib", "lib/modules", *(f"lib/modules/{n}.ko" for n, _ in modules), "TRAILER!!!",
    ]  # fmt: skip
    assert fetch.busybox_from_cpio(archive) == busybox
    # virtio_pci needs virtio_ring, virtio_pci_modern_dev, virtio_pci_legacy_dev and virtio first;
    # virtio_blk needs virtio and virtio_ring (each module's .modinfo depends=).
    order = [n for _, n in fetch.VIRTIO_MODULES]
    assert order.index("virtio_pci") > max(
        order.index(d) for d in ("virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev")
    )
    assert order[-1] == "virtio_blk"
    init = fetch.VIRTIO_INIT_SCRIPT
    assert f"for m in {' '.join(order)}; do" in init
    assert "mount -t ext4 -o ro /dev/vda /mnt" in init and f"/mnt/{fetch.DISK_FILE}" in init
    assert 'case "$rgexit" in reboot)' in init


def test_deb_spec_names_the_exact_version(fetch: ModuleType) -> None:
    assert (
        fetch._deb_spec("linux-image-6.1.0-50-cloud-amd64_6.1.176-1_amd64.deb")
        == "linux-image-6.1.0-50-cloud-amd64=6.1.176-1"
    )
    assert fetch._deb_spec("busybox-static_1%3a1.35.0-4_amd64.deb") == "busybox-static=1:1.35.0-4"


def test_cached_guest_matches_its_manifest(fetch: ModuleType) -> None:
    guest = ROOT / "work-guests" / "linux"
    if not (guest / "manifest.json").is_file() or not (guest / "initramfs.cpio").is_file():
        pytest.skip("no cached guest in work-guests/linux (scripts/fetch-linux-guest.py)")
    manifest = json.loads((guest / "manifest.json").read_text())
    plain = (guest / "initramfs.cpio").read_bytes()
    assert hashlib.sha256(plain).hexdigest() == manifest["initramfs_sha256"]
    # Rebuilt from its own busybox, the plain archive is the same bytes.
    assert fetch.build_initramfs(fetch.busybox_from_cpio(plain)) == plain
    virtio = guest / "initramfs-virtio.cpio"
    if virtio.is_file() and "initramfs_virtio_sha256" in manifest:
        data = virtio.read_bytes()
        assert hashlib.sha256(data).hexdigest() == manifest["initramfs_virtio_sha256"]
        assert fetch.busybox_from_cpio(data) == fetch.busybox_from_cpio(plain)
