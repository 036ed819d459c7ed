"""The checked-in images and symbols are exactly what guest-src/build.py makes from the sources."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "guest-src"
BUILD_PY = SOURCES / "build.py"
PACKAGE = ROOT / "src" / "acrn" / "guests"

needs_binutils = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("as", "ld", "objcopy", "nm")),
    reason="needs GNU binutils (as, ld, objcopy, nm)",
)


def _build_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("guests_build", BUILD_PY)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["guests_build"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_every_source_has_a_checked_in_image() -> None:
    sources = {p.stem for p in SOURCES.glob("*.S")}
    images = {p.stem for p in PACKAGE.glob("*.bin")}
    assert sources == images
    assert set(json.loads((PACKAGE / "symbols.json").read_text())) == sources


def test_catalogue_lists_every_image() -> None:
    from acrn.guests import GUESTS

    assert set(GUESTS) == {p.stem for p in PACKAGE.glob("*.bin")}


@needs_binutils
def test_rebuild_matches_checked_in_bytes(tmp_path: Path) -> None:
    images = _build_module().build_all(tmp_path)
    for name, image in images.items():
        assert image == (PACKAGE / f"{name}.bin").read_bytes(), f"{name}.bin differs from guest-src/{name}.S"
    assert json.loads((tmp_path / "symbols.json").read_text()) == json.loads(
        (PACKAGE / "symbols.json").read_text()
    )
