"""The codebase stays `ruff` and `mypy --strict` clean (part of the test command, so CI enforces it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean() -> None:
    r = subprocess.run(["ruff", "check", "src", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_format_clean() -> None:
    r = subprocess.run(
        ["ruff", "format", "--check", "src", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_clean() -> None:
    pytest.importorskip("mypy")
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_import_does_not_load_heavy_modules() -> None:
    """`acrn --help` must start fast: no unicorn, capstone or emulator import at CLI parse time."""
    code = (
        "import sys; import acrn.cli; acrn.cli.build_parser(); "
        "heavy = [m for m in ('unicorn', 'capstone', 'acrn.emu.hv', 'acrn.emu.accel.kvm') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == ""


#: A reference a reader cannot follow from the repository: the project's old specification
#: (a section number of the design notes, their file names, a section sign), or a path outside the repository.
_OUT_OF_TREE_REF = re.compile(
    r"\bspec(?:ification)?\s+(?:acrn-hsm\.md\s+|kvm-and-boot\.md\s+)?§?\d+(?:\.\d+)*"
    r"|acrn-hsm\.md|kvm-and-boot\.md|\.\./shared|§\s?\d",
    re.IGNORECASE,
)


def test_references_are_followable_from_the_repository() -> None:
    """The code, docs, scripts, benchmarks and guests cite ACRN's or Linux's source (file and
    function) or the project's docs, never notes kept outside the repository."""
    found = []
    paths = [
        *(ROOT / "src").rglob("*.py"), *(ROOT / "src").rglob("*.[ch]"), *(ROOT / "docs").rglob("*.md"),
        *(ROOT / "scripts").iterdir(), *(ROOT / "benchmarks").iterdir(), *(ROOT / "guest-src").iterdir(),
        ROOT / "README.md",
    ]  # fmt: skip
    for path in sorted(p for p in paths if p.is_file()):
        rel = path.relative_to(ROOT).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = _OUT_OF_TREE_REF.search(line)
            if m:
                found.append(f"{rel}:{n}: {m.group(0)!r}")
    assert not found, "references outside the repository:\n" + "\n".join(found)


def test_the_device_model_reaches_the_emulator_only_through_its_control_port() -> None:
    """``acrn.dm`` drives the real HSM and the emulator with the same code: of ``acrn.emu`` it
    imports the control port (``acrn.emu.control``) and nothing else."""
    pattern = re.compile(r"^\s*(?:from|import)\s+(acrn\.emu(?:\.\w+)*)", re.MULTILINE)
    found = [
        f"{path.relative_to(ROOT)}: {m.group(1)}"
        for path in sorted((ROOT / "src" / "acrn" / "dm").rglob("*.py"))
        for m in pattern.finditer(path.read_text())
        if m.group(1) != "acrn.emu.control"
    ]
    assert not found, "acrn.dm imports emulator internals:\n" + "\n".join(found)
