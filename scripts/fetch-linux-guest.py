#!/usr/bin/env python3
"""Fetch a stock Debian cloud kernel and build a tiny busybox initramfs for pyacrn's boot tests.

Nothing from Debian's archive is committed: everything lands in the repository's ignored
``work-guests/linux/`` (or ``--dest``), which the tests and benchmarks read (``ACRN_GUEST_DIR``
overrides it).  Steps:

1. ``apt-cache depends linux-image-cloud-amd64`` names the current kernel package (after an
   ``apt-get update`` when the package lists are empty and we are root);
2. ``apt-get download`` of that package and ``busybox-static``;
3. ``dpkg-deb --fsys-tarfile`` extracts ``/boot/vmlinuz-*`` -> ``vmlinuz``, ``dpkg-deb -x`` gives
   ``/bin/busybox``;
4. a "newc" cpio archive is written in pure Python (reproducible: mtime 0, uid/gid 0, no root or
   mknod needed) with ``/init``, ``/bin/busybox``, ``/bin/sh``, ``/dev/console``, ``/dev/ttyS0``,
   ``/dev/null``, ``/proc``, ``/sys``.  ``/init`` prints ``GUEST-INIT-OK`` and powers off (or
   reboots / halts / exits / starts a shell with ``rgexit=`` on the kernel command line);
5. when the ``lz4`` tool is installed and the payload is an LZ4 legacy frame (the cloud kernel's),
   the uncompressed ``vmlinux`` ELF is extracted from the bzImage payload (``acrn run --vmlinux``);
6. ``initramfs-virtio.cpio``: the same archive plus the virtio-blk modules of the same kernel package
   (the cloud kernel builds VIRTIO, VIRTIO_PCI and VIRTIO_BLK as modules, uncompressed; the .deb
   has no modules.dep, the order below follows each module's ``depends=``) and an ``/init`` that
   loads them with busybox ``insmod``, mounts ``/dev/vda`` read-only as ext4 and prints
   ``/mnt/guest-disk.txt`` between ``GUEST-DISK-BEGIN`` and ``GUEST-DISK-END`` before the same
   ``rgexit=`` choice.  When only this file is missing, it is built from the cached
   ``initramfs.cpio``'s busybox and the manifest's exact kernel package version.

Exit status: 0 ready (already cached or fetched), 2 when the archive cannot be reached (the reason
is printed; boot tests then skip).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / "work-guests" / "linux"
META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
MARKER = "GUEST-INIT-OK"

INIT_SCRIPT = f"""#!/bin/busybox sh
echo {MARKER}
/bin/busybox mount -t proc proc /proc 2>/dev/null && {{ read up idle < /proc/uptime; echo "GUEST-UPTIME $up"; }}
case "$rgexit" in reboot) exec busybox reboot -f;; halt) exec busybox halt -f;;
  exit) exit 0;; shell) exec busybox sh;; *) exec busybox poweroff -f;; esac
"""


#: (path in the kernel package under lib/modules/<release>/kernel/, name) in load order: virtio_pci
#: depends on virtio_ring, virtio_pci_modern_dev, virtio_pci_legacy_dev and virtio; virtio_blk on
#: virtio and virtio_ring (the ``depends=`` of each module's .modinfo).
VIRTIO_MODULES = [
    ("drivers/virtio/virtio.ko", "virtio"),
    ("drivers/virtio/virtio_ring.ko", "virtio_ring"),
    ("drivers/virtio/virtio_pci_legacy_dev.ko", "virtio_pci_legacy_dev"),
    ("drivers/virtio/virtio_pci_modern_dev.ko", "virtio_pci_modern_dev"),
    ("drivers/virtio/virtio_pci.ko", "virtio_pci"),
    ("drivers/block/virtio_blk.ko", "virtio_blk"),
]
DISK_FILE = "guest-disk.txt"
VIRTIO_INIT_SCRIPT = f"""#!/bin/busybox sh
echo {MARKER}
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in {" ".join(name for _, name in VIRTIO_MODULES)}; do
  busybox insmod /lib/modules/$m.ko && echo "GUEST-INSMOD $m" || echo "GUEST-INSMOD-FAILED $m"
done
n=0; while [ ! -b /dev/vda ] && [ $n -lt 60 ]; do busybox sleep 1; n=$((n+1)); done
busybox mkdir -p /mnt
if busybox mount -t ext4 -o ro /dev/vda /mnt; then
  echo GUEST-DISK-BEGIN; busybox cat /mnt/{DISK_FILE}; echo GUEST-DISK-END; busybox umount /mnt
else
  echo "GUEST-DISK-FAILED"; busybox ls -l /dev; busybox cat /proc/partitions
fi
case "$rgexit" in reboot) exec busybox reboot -f;; halt) exec busybox halt -f;;
  exit) exit 0;; shell) exec busybox sh;; *) exec busybox poweroff -f;; esac
"""


class FetchError(Exception):
    """The archive or a tool is unavailable."""


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise FetchError(f"{cmd[0]} is not installed") from None
    if done.returncode != 0:
        raise FetchError(f"{' '.join(cmd)} failed: {(done.stderr or done.stdout).strip()[-400:]}")
    return done.stdout


def kernel_package() -> str:
    """The concrete package the cloud meta-package depends on (e.g. linux-image-6.1.0-50-cloud-amd64)."""
    for attempt in range(2):
        try:
            out = _run(["apt-cache", "depends", META_PACKAGE])
        except FetchError:
            out = ""
        m = re.search(r"Depends:\s*(linux-image-[^\s]+-cloud-amd64)", out)
        if m:
            return m.group(1)
        if attempt == 0 and os.geteuid() == 0:
            _run(["apt-get", "update", "-qq"])
    raise FetchError(f"apt-cache does not know {META_PACKAGE} (no Debian package lists?)")


# ------------------------------------------------------------------------------------- cpio
def _cpio_entry(
    name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), ino: int = 0
) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    head = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
    out = head + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def build_initramfs(
    busybox: bytes, init: str = INIT_SCRIPT, modules: list[tuple[str, bytes]] | None = None
) -> bytes:
    """A newc cpio archive: init, busybox, sh symlink, device nodes, mount points.

    ``modules`` (name, contents) go to ``/lib/modules/<name>.ko``, after the other entries (without
    them the archive is what it always was).
    """
    entries = [
        ("bin", 0o040755, b"", (0, 0)),
        ("dev", 0o040755, b"", (0, 0)),
        ("proc", 0o040755, b"", (0, 0)),
        ("sys", 0o040755, b"", (0, 0)),
        ("init", 0o100755, init.encode(), (0, 0)),
        ("bin/busybox", 0o100755, busybox, (0, 0)),
        ("bin/sh", 0o120777, b"busybox", (0, 0)),
        ("dev/console", 0o020600, b"", (5, 1)),
        ("dev/ttyS0", 0o020660, b"", (4, 64)),
        ("dev/null", 0o020666, b"", (1, 3)),
    ]
    if modules:
        entries += [("lib", 0o040755, b"", (0, 0)), ("lib/modules", 0o040755, b"", (0, 0))]
        entries += [(f"lib/modules/{name}.ko", 0o100644, data, (0, 0)) for name, data in modules]
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        out += _cpio_entry(name, mode, data, rdev, ino)
    out += _cpio_entry("TRAILER!!!", 0)
    out += b"\0" * (-len(out) % 512)
    return bytes(out)


# ------------------------------------------------------------------------------------- vmlinux
LZ4_LEGACY_MAGIC = bytes.fromhex("02214c18")


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF inside a bzImage whose payload is LZ4 legacy (None if not, or without ``lz4``)."""
    if shutil.which("lz4") is None or len(bzimage) < 0x250:
        return None
    setup = ((bzimage[0x1F1] or 4) + 1) * 512
    offset, length = (
        int.from_bytes(bzimage[0x248:0x24C], "little"),
        int.from_bytes(bzimage[0x24C:0x250], "little"),
    )
    payload = bzimage[setup + offset : setup + offset + length]
    if not payload.startswith(LZ4_LEGACY_MAGIC):
        return None
    # lz4 exits non-zero on the size word the kernel build appends after the frame; the output is whole.
    done = subprocess.run(["lz4", "-d", "-c"], input=payload, capture_output=True, check=False)
    return done.stdout if done.stdout.startswith(b"\x7fELF") else None


# ------------------------------------------------------------------------------------- virtio
def read_modules(deb: Path, work: Path) -> list[tuple[str, bytes]]:
    """``VIRTIO_MODULES`` from a kernel package, uncompressed as busybox insmod needs them."""
    mx = work / "modules"
    mx.mkdir()
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    patterns = [f"./lib/modules/*/kernel/{path}*" for path, _ in VIRTIO_MODULES]
    done = subprocess.run(
        ["tar", "-x", "-C", str(mx), "--wildcards", *patterns], stdin=tar.stdout, check=False
    )
    tar.wait()
    if tar.returncode or done.returncode:
        raise FetchError(f"could not extract the virtio modules from {deb.name}")
    out = []
    for path, name in VIRTIO_MODULES:
        found = sorted(mx.glob(f"lib/modules/*/kernel/{path}*"))
        if not found:
            raise FetchError(f"{deb.name} has no {path}")
        if found[0].suffix != ".ko":
            raise FetchError(f"{deb.name}: {found[0].name} is compressed (busybox insmod needs .ko)")
        out.append((name, found[0].read_bytes()))
    return out


def busybox_from_cpio(archive: bytes) -> bytes:
    """``bin/busybox`` out of a newc archive written by ``build_initramfs``."""
    pos = 0
    while archive[pos : pos + 6] == b"070701":
        size, namesize = int(archive[pos + 54 : pos + 62], 16), int(archive[pos + 94 : pos + 102], 16)
        name = archive[pos + 110 : pos + 110 + namesize - 1].decode()
        data_at = pos + 110 + namesize + (-(110 + namesize) % 4)
        if name == "bin/busybox":
            return archive[data_at : data_at + size]
        pos = data_at + size + (-size % 4)
    raise FetchError("the cached initramfs.cpio has no bin/busybox")


def _deb_spec(filename: str) -> str:
    """``name=version`` of a downloaded package's file name (``apt-get download`` quotes ``:``)."""
    name, version = filename.split("_")[:2]
    return f"{name}={version.replace('%3a', ':')}"


def add_virtio_initramfs(dest: Path, manifest: dict[str, str]) -> dict[str, str]:
    """Build the missing ``initramfs-virtio.cpio`` beside a cached guest, from the same kernel."""
    with tempfile.TemporaryDirectory(prefix="acrn-guest-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        _run(["apt-get", "download", "-qq", _deb_spec(manifest["kernel_package"])], cwd=work)
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise FetchError(f"apt-get download did not produce {manifest['kernel_package']}")
        busybox = busybox_from_cpio((dest / "initramfs.cpio").read_bytes())
        data = build_initramfs(busybox, VIRTIO_INIT_SCRIPT, read_modules(debs[0], work))
    (dest / "initramfs-virtio.cpio").write_bytes(data)
    manifest["initramfs_virtio_sha256"] = hashlib.sha256(data).hexdigest()
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ------------------------------------------------------------------------------------- fetch
def fetch(dest: Path, force: bool = False) -> dict[str, str]:
    manifest_path = dest / "manifest.json"
    if (
        not force
        and manifest_path.is_file()
        and (dest / "vmlinuz").is_file()
        and (dest / "initramfs.cpio").is_file()
    ):
        manifest: dict[str, str] = json.loads(manifest_path.read_text())
        if not (dest / "initramfs-virtio.cpio").is_file():
            for tool in ("apt-get", "dpkg-deb"):
                if shutil.which(tool) is None:
                    raise FetchError(f"{tool} not found (a Debian host is needed)")
            manifest = add_virtio_initramfs(dest, manifest)
        return manifest
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise FetchError(f"{tool} not found (a Debian host is needed)")
    pkg = kernel_package()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="acrn-guest-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apt's _apt user must be able to write the downloads
        _run(["apt-get", "download", "-qq", pkg, BUSYBOX_PACKAGE], cwd=work)
        debs = {p.name.split("_")[0]: p for p in work.glob("*.deb")}
        if pkg not in debs or BUSYBOX_PACKAGE not in debs:
            raise FetchError(f"apt-get download did not produce {pkg} and {BUSYBOX_PACKAGE}")
        kx = work / "kernel"
        kx.mkdir()
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[pkg])], stdout=subprocess.PIPE)
        _run_pipe = subprocess.run(["tar", "-x", "-C", str(kx), "./boot"], stdin=tar.stdout, check=False)
        tar.wait()
        if tar.returncode or _run_pipe.returncode:
            raise FetchError(f"could not extract /boot from {debs[pkg].name}")
        vmlinuz = next(iter(sorted((kx / "boot").glob("vmlinuz-*"))), None)
        if vmlinuz is None:
            raise FetchError(f"{debs[pkg].name} has no /boot/vmlinuz-*")
        shutil.copyfile(vmlinuz, dest / "vmlinuz")
        config = next(iter(sorted((kx / "boot").glob("config-*"))), None)
        if config is not None:
            shutil.copyfile(config, dest / "config")
        bx = work / "busybox"
        _run(["dpkg-deb", "-x", str(debs[BUSYBOX_PACKAGE]), str(bx)])
        busybox = (bx / "bin" / "busybox").read_bytes()
        (dest / "initramfs.cpio").write_bytes(build_initramfs(busybox))
        virtio = build_initramfs(busybox, VIRTIO_INIT_SCRIPT, read_modules(debs[pkg], work))
        (dest / "initramfs-virtio.cpio").write_bytes(virtio)
        vmlinux = extract_vmlinux((dest / "vmlinuz").read_bytes())
        if vmlinux is not None:
            (dest / "vmlinux").write_bytes(vmlinux)
        manifest = {
            "kernel_package": debs[pkg].name,
            "kernel": vmlinuz.name,
            "busybox_package": debs[BUSYBOX_PACKAGE].name,
            "marker": MARKER,
            "vmlinuz_sha256": hashlib.sha256((dest / "vmlinuz").read_bytes()).hexdigest(),
            "initramfs_sha256": hashlib.sha256((dest / "initramfs.cpio").read_bytes()).hexdigest(),
            "initramfs_virtio_sha256": hashlib.sha256(virtio).hexdigest(),
        }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", type=Path, default=Path(os.environ.get("ACRN_GUEST_DIR", DEFAULT_DEST)))
    p.add_argument("--force", action="store_true", help="download again even if cached")
    args = p.parse_args(argv)
    try:
        manifest = fetch(args.dest, args.force)
    except FetchError as e:
        print(f"fetch-linux-guest: cannot fetch the guest: {e}", file=sys.stderr)
        return 2
    print(
        f"guest ready in {args.dest}: {manifest['kernel']} + initramfs.cpio ({manifest['busybox_package']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
