#!/usr/bin/env python3
"""Assemble the built-in guests (guest-src/*.S) into the flat images in src/acrn/guests/.

Each guest is assembled with GNU ``as``, linked with ``ld`` and ``guest.ld`` at GPA 0x8000 and cut to
a flat binary with ``objcopy -O binary``.  The addresses the register state needs (entry point, GDT,
page tables) are read from the linked ELF with ``nm`` and written to ``src/acrn/guests/symbols.json``,
so the Python catalogue never hard-codes a layout that the sources could change.

Usage: ``python guest-src/build.py [--out DIR]`` (default: the package directory).  Needs binutils.
The checked-in outputs are compared with a fresh build by tests/guests/test_build.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_DIR = HERE.parent / "src" / "acrn" / "guests"
#: Symbols exported to symbols.json when a guest defines them.
EXPORTED = ("start", "gdt", "gdt_end", "pml4", "image_end", "lstar")


def guest_sources() -> list[Path]:
    """Every guest source, in a stable order (helpers are *.inc, not *.S)."""
    return sorted(HERE.glob("*.S"))


def _run(*cmd: str) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr}")
    return res.stdout


def build_one(src: Path, workdir: Path) -> tuple[bytes, dict[str, int]]:
    """Assemble, link and flatten one guest; return its image and exported symbols."""
    obj = workdir / f"{src.stem}.o"
    elf = workdir / f"{src.stem}.elf"
    flat = workdir / f"{src.stem}.bin"
    _run("as", "--64", "-I", str(HERE), "-o", str(obj), str(src))
    _run("ld", "-m", "elf_x86_64", "-nostdlib", "--build-id=none", "-T", str(HERE / "guest.ld"),
         "-o", str(elf), str(obj))  # fmt: skip
    _run("objcopy", "-O", "binary", "-j", ".image", str(elf), str(flat))
    symbols: dict[str, int] = {}
    for line in _run("nm", str(elf)).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] in EXPORTED:
            symbols[parts[2]] = int(parts[0], 16)
    return flat.read_bytes(), symbols


def build_all(out: Path) -> dict[str, bytes]:
    """Build every guest into ``out`` (``<name>.bin`` plus ``symbols.json``); return the images."""
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = {}
    table: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for src in guest_sources():
            image, symbols = build_one(src, Path(tmp))
            images[src.stem] = image
            table[src.stem] = symbols
            (out / f"{src.stem}.bin").write_bytes(image)
    (out / "symbols.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return images


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=PACKAGE_DIR, help="output directory")
    args = ap.parse_args(argv)
    for name, image in build_all(args.out).items():
        print(f"{name}: {len(image)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
