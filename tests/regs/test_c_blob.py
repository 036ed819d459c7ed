"""A blob written by C against <linux/acrn.h> decodes to the same values in pyacrn, and back.

The C program fills every field of ``struct acrn_vcpu_regs`` with a distinctive value (a different
byte pattern per field, so a swapped or shifted field cannot go unnoticed) and writes the struct.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from acrn.arch import GPR_NAMES
from acrn.cli import main
from acrn.regs.model import SELECTOR_NAMES, U64_NAMES, VcpuRegs

HEADER = Path("/usr/include/linux/acrn.h")
pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or not HEADER.exists(),
    reason="needs gcc and <linux/acrn.h> (Debian package linux-libc-dev)",
)


def expected() -> VcpuRegs:
    """The values the C program writes: field number n gets a pattern derived from n."""
    n = iter(range(1, 200))

    def v64() -> int:
        k = next(n)
        return 0x0102030405060708 * k & ((1 << 64) - 1) | k << 56

    def v32() -> int:
        k = next(n)
        return (0xA0B0C000 | k) & 0xFFFFFFFF

    def v16() -> int:
        k = next(n)
        return 0xF000 | k

    r = VcpuRegs(vcpu_id=v16(), reserved=[v16(), v16(), v16()])
    for g in GPR_NAMES:
        setattr(r, g, v64())
    for name in ("gdt", "idt"):
        d = getattr(r, name)
        d.limit, d.base, d.reserved = v16(), v64(), [v16(), v16(), v16()]
    for u in U64_NAMES:
        setattr(r, u, v64())
    r.reserved_64 = [v64() for _ in range(4)]
    r.cs_ar, r.cs_limit = v32(), v32()
    r.reserved_32 = [v32() for _ in range(3)]
    for s in SELECTOR_NAMES:
        setattr(r, s, v16())
    return r


def c_source(r: VcpuRegs) -> str:
    """C statements assigning the same values, field by field, in the same order as expected()."""
    lines = ["memset(&s, 0, sizeof s);", f"s.vcpu_id = {r.vcpu_id:#x};"]
    lines += [f"s.reserved[{i}] = {x:#x};" for i, x in enumerate(r.reserved)]
    lines += [f"s.vcpu_regs.gprs.{g} = {getattr(r, g):#x}ULL;" for g in GPR_NAMES]
    for name in ("gdt", "idt"):
        d = getattr(r, name)
        lines += [f"s.vcpu_regs.{name}.limit = {d.limit:#x};", f"s.vcpu_regs.{name}.base = {d.base:#x}ULL;"]
        lines += [f"s.vcpu_regs.{name}.reserved[{i}] = {x:#x};" for i, x in enumerate(d.reserved)]
    lines += [f"s.vcpu_regs.{u} = {getattr(r, u):#x}ULL;" for u in U64_NAMES]
    lines += [f"s.vcpu_regs.reserved_64[{i}] = {x:#x}ULL;" for i, x in enumerate(r.reserved_64)]
    lines += [f"s.vcpu_regs.cs_ar = {r.cs_ar:#x}U;", f"s.vcpu_regs.cs_limit = {r.cs_limit:#x}U;"]
    lines += [f"s.vcpu_regs.reserved_32[{i}] = {x:#x}U;" for i, x in enumerate(r.reserved_32)]
    lines += [f"s.vcpu_regs.{sel} = {getattr(r, sel):#x};" for sel in SELECTOR_NAMES]
    body = "\n    ".join(lines)
    return f"""
#include <stdio.h>
#include <string.h>
#include <linux/acrn.h>

int main(int argc, char **argv)
{{
    struct acrn_vcpu_regs s;
    FILE *f;
    _Static_assert(sizeof(struct acrn_vcpu_regs) == 296, "size");
    {body}
    f = fopen(argv[1], "wb");
    if (!f || fwrite(&s, sizeof s, 1, f) != 1)
        return 1;
    return fclose(f) != 0;
}}
"""


@pytest.fixture(scope="module")
def c_blob(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cblob")
    (d / "fill.c").write_text(c_source(expected()))
    subprocess.run(
        ["gcc", "-std=c11", "-Wall", "-Werror", "-o", str(d / "fill"), str(d / "fill.c")], check=True
    )
    subprocess.run([str(d / "fill"), str(d / "regs.bin")], check=True)
    return d / "regs.bin"


def test_c_written_blob_decodes_to_the_same_values(c_blob: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["regs", "decode", str(c_blob)]) == 0
    decoded = VcpuRegs.from_json_dict(json.loads(capsys.readouterr().out))
    assert decoded == expected()


def test_pyacrn_encodes_the_c_blob_byte_for_byte(c_blob: Path, tmp_path: Path) -> None:
    src = tmp_path / "e.json"
    src.write_text(json.dumps(expected().to_json_dict(hex_values=True)))
    out = tmp_path / "e.bin"
    assert main(["regs", "encode", str(src), "-o", str(out)]) == 0
    assert out.read_bytes() == c_blob.read_bytes()
