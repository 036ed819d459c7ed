"""``acrn run`` with acrn-dm's loader options (-E, -k, -m, -v, --stop-at)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from acrn.cli import main

# mov al, 0x2a; out 0xf4, al; hlt
DEBUGEXIT_2A = bytes.fromhex("b02ae6f4f4")


def _elf(tmp_path: Path, code: bytes) -> Path:
    out = bytearray(0x100)
    out[:16] = b"\x7fELF\x01\x01\x01" + bytes(9)
    struct.pack_into("<HHIIIIIHHHHHH", out, 16, 2, 3, 1, 0x400000, 0x34, 0, 0, 0x34, 32, 1, 40, 0, 0)
    struct.pack_into("<8I", out, 0x34, 1, 0x100, 0x400000, 0x400000, len(code), len(code), 7, 0x1000)
    path = tmp_path / "guest.elf"
    path.write_bytes(bytes(out) + code)
    return path


@pytest.mark.soft
def test_run_elf_returns_the_debugexit_status_and_shows_loader_decisions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elf = _elf(tmp_path, DEBUGEXIT_2A)
    rc = main(["run", "-E", str(elf), "-m", "16M", "--accel", "soft", "--stdin", "off", "-v"])
    err = capsys.readouterr().err
    assert rc == (0x2A << 1) | 1
    assert "elf loader:" in err and "GDT at 0xff0000" in err and "VM ended: debugexit" in err


def test_missing_kernel_file_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "-k", str(tmp_path / "nope"), "--stdin", "off"])
    assert rc == 1 and "--kernel" in capsys.readouterr().err


def test_memsize_not_a_2_mib_multiple_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "-E", str(_elf(tmp_path, DEBUGEXIT_2A)), "-m", "3M", "--stdin", "off"])
    assert rc == 1 and "2 MiB" in capsys.readouterr().err


def test_loader_options_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["run", "-E", "a", "-k", "b"])
