"""``acrn regs`` through acrn.cli.main: exit codes, output formats, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acrn.cli import main
from acrn.regs import io, presets
from acrn.regs.model import VcpuRegs


def write(tmp_path: Path, name: str, regs: VcpuRegs, blob: bool = False) -> str:
    p = tmp_path / name
    if blob:
        io.save_blob(regs, p)
    else:
        io.save_json(regs, p)
    return str(p)


def test_validate_exits_0_on_clean_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "bz.json", presets.bzimage())
    assert main(["regs", "validate", f]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out


def test_validate_exits_1_on_error_and_json_lists_findings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path, "elf.bin", presets.elf(), blob=True)
    assert main(["regs", "validate", f, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [d["rule"] for d in out] == ["arch.cs.reserved_11_8"]
    assert set(out[0]) >= {"level", "severity", "rule", "fields", "message"}
    assert main(["regs", "validate", f, "--level", "acrn", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_validate_warnings_alone_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "reset.json", presets.reset())
    assert main(["regs", "validate", f]) == 0
    assert "warning: arch.cr0.pe_unrestricted" in capsys.readouterr().out


def test_validate_abi_level_reports_reserved_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"vcpu_regs": {"cr0": "0x31", "reserved_32": [0, 1, 0]}}))
    assert main(["regs", "validate", str(p), "--level", "abi"]) == 1
    assert "vcpu_regs.reserved_32[1]" in capsys.readouterr().out


def test_show_prints_decoded_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "l.json", presets.long64())
    assert main(["regs", "show", f]) == 0
    out = capsys.readouterr().out
    assert "64-bit long mode" in out and "L=1" in out and "[LME|LMA]" in out


def test_show_effective_prints_landed_segments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "bz.json", presets.bzimage())
    assert main(["regs", "show", "--effective", f]) == 0
    out = capsys.readouterr().out
    assert "ldtr sel 0x0000" in out and "ar 0x0c093" in out and "rflags 0x0000000000000002" in out


def test_diff_exit_status_and_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path, "a.json", presets.ovmf())
    b = write(tmp_path, "b.bin", presets.reset(), blob=True)
    assert main(["regs", "diff", a, a]) == 0
    assert capsys.readouterr().out == ""
    assert main(["regs", "diff", a, b]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "vcpu_regs.gdt.limit: 0x0 -> 0xffff",
        "vcpu_regs.idt.limit: 0x0 -> 0xffff",
        "vcpu_regs.rflags: 0x0 -> 0x2",
    ]


def test_encode_decode_round_trip_is_byte_exact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = presets.elf(multiboot=True)
    r.reserved_64[1] = 0xDEADBEEF
    src = write(tmp_path, "in.json", r)
    blob, out = tmp_path / "r.bin", tmp_path / "r.json"
    assert main(["regs", "encode", src, "-o", str(blob)]) == 0
    assert blob.read_bytes() == r.to_bytes()
    assert main(["regs", "decode", str(blob), "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["vcpu_regs"]["cs_ar"] == "0xcf9b"  # hex strings
    assert VcpuRegs.from_json_dict(doc).to_bytes() == blob.read_bytes()
    assert main(["regs", "decode", str(blob)]) == 0
    assert json.loads(capsys.readouterr().out) == doc


def test_decode_refuses_a_non_blob(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(tmp_path, "in.json", presets.elf())
    assert main(["regs", "decode", src]) == 1
    err = capsys.readouterr().err
    assert err.startswith("acrn: error: ") and "296 bytes" in err and len(err.splitlines()) == 1


def test_preset_prints_json_with_params(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["regs", "preset", "bzimage", "--param", "setup_sects=0x1e", "--param", "lowmem=0x20000000"])
        == 0
    )
    r = VcpuRegs.from_json_dict(json.loads(capsys.readouterr().out))
    assert r == presets.bzimage(lowmem=0x20000000, setup_sects=0x1E)


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_preset_works_without_params(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["regs", "preset", name]) == 0
    assert VcpuRegs.from_json_dict(json.loads(capsys.readouterr().out)) == presets.PRESETS[name]()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["regs", "preset", "elf", "--param", "bogus=1"], "'bogus'"),
     (["regs", "preset", "nosuch"], "nosuch"),
     (["regs", "preset", "bzimage", "--param", "lowmem=1"], "lowmem")],
)  # fmt: skip
def test_preset_errors_are_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("acrn: error: ") and needle in err and len(err.splitlines()) == 1


def test_bad_field_in_input_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "typo.json"
    p.write_text(json.dumps({"vcpu_regs": {"cr9": 1}}))
    assert main(["regs", "show", str(p)]) == 1
    err = capsys.readouterr().err
    assert "vcpu_regs.cr9: unknown field" in err and len(err.splitlines()) == 1


def test_missing_file_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["regs", "validate", str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("acrn: error: ") and len(err.splitlines()) == 1
