"""acrn.regs.io: JSON/blob detection, byte-exact round trips, diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acrn.arch import GPR_NAMES
from acrn.regs import io
from acrn.regs.model import SELECTOR_NAMES, U64_NAMES, DescriptorPtr, RegsFormatError, VcpuRegs

u16, u32, u64 = (st.integers(0, (1 << b) - 1) for b in (16, 32, 64))


@st.composite
def vcpu_regs(draw: st.DrawFn) -> VcpuRegs:
    r = VcpuRegs(vcpu_id=draw(u16), reserved=draw(st.lists(u16, min_size=3, max_size=3)))
    for n in (*GPR_NAMES, *U64_NAMES):
        setattr(r, n, draw(u64))
    for n in SELECTOR_NAMES:
        setattr(r, n, draw(u16))
    for n in ("gdt", "idt"):
        setattr(r, n, DescriptorPtr(draw(u64), draw(u16), draw(st.lists(u16, min_size=3, max_size=3))))
    r.cs_ar, r.cs_limit = draw(u32), draw(u32)
    r.reserved_32 = draw(st.lists(u32, min_size=3, max_size=3))
    r.reserved_64 = draw(st.lists(u64, min_size=4, max_size=4))
    return r


@settings(max_examples=200)
@given(vcpu_regs())
def test_blob_round_trip_is_byte_exact(r: VcpuRegs) -> None:
    blob = r.to_bytes()
    assert len(blob) == io.BLOB_SIZE == 296
    back = io.loads_regs(blob)
    assert back == r
    assert back.to_bytes() == blob


@settings(max_examples=200)
@given(vcpu_regs())
def test_json_round_trip_through_hex_text(r: VcpuRegs) -> None:
    text = io.dumps_json(r)
    assert io.loads_regs(text.encode()) == r
    assert io.loads_regs(text.encode()).to_bytes() == r.to_bytes()


def test_blob_starting_with_brace_is_still_a_blob() -> None:
    r = VcpuRegs(vcpu_id=ord("{"), rax=0x1234)
    assert io.loads_regs(r.to_bytes()) == r


def test_json_with_surrounding_whitespace_is_json() -> None:
    assert io.loads_regs(b'\n  {"vcpu_regs": {"cr0": "0x31"}}\n').cr0 == 0x31


def test_wrong_size_input_error_names_the_file_and_size(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"\0" * 100)
    with pytest.raises(RegsFormatError, match=r"x\.bin.*296.*100 bytes"):
        io.load_regs(p)


def test_json_error_names_the_field(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"vcpu_regs": {"cs_ar": "0xZZ"}}))
    with pytest.raises(RegsFormatError, match=r"x\.json: vcpu_regs\.cs_ar"):
        io.load_regs(p)


def test_broken_json_is_reported_as_json() -> None:
    with pytest.raises(RegsFormatError, match="invalid JSON"):
        io.loads_regs(b'{"vcpu_id": ')


def test_save_and_load_both_formats(tmp_path: Path) -> None:
    r = VcpuRegs(rip=0xFFF0, cs_sel=0xF000, gdt=DescriptorPtr(0x1000, 0x17))
    io.save_json(r, tmp_path / "a.json")
    io.save_blob(r, tmp_path / "a.bin")
    assert io.load_regs(tmp_path / "a.json") == io.load_regs(tmp_path / "a.bin") == r
    assert (tmp_path / "a.bin").read_bytes() == r.to_bytes()


def test_flatten_uses_c_paths_in_struct_order() -> None:
    keys = list(io.flatten(VcpuRegs()))
    assert keys[:5] == ["vcpu_id", "reserved[0]", "reserved[1]", "reserved[2]", "vcpu_regs.gprs.rax"]
    assert "vcpu_regs.gdt.reserved[2]" in keys and keys[-1] == "vcpu_regs.tr_sel"
    assert len(keys) == 1 + 3 + 16 + 2 * 5 + 7 + 4 + 2 + 3 + 8


def test_diff_lists_only_changed_fields() -> None:
    a, b = VcpuRegs(), VcpuRegs(cr0=0x31)
    b.idt.reserved[1] = 2
    assert io.diff(a, b) == [("vcpu_regs.idt.reserved[1]", 0, 2), ("vcpu_regs.cr0", 0, 0x31)]
    assert io.diff(a, a.copy()) == []


@settings(max_examples=150)
@given(vcpu_regs())
def test_validate_and_show_accept_any_state_and_name_real_fields(r: VcpuRegs) -> None:
    from acrn.regs import show
    from acrn.regs.validate import validate

    paths = set(io.flatten(r))
    for f in validate(r):
        assert f.severity in ("error", "warning")
        assert all(p in paths for p in f.fields), f.fields
    assert show.format_regs(r)
    assert show.format_state(show.effective_state(r))


def _too_wide_cases() -> list[tuple[str, int]]:
    cases = [(n, 64) for n in GPR_NAMES] + [(n, 64) for n in U64_NAMES] + [(n, 16) for n in SELECTOR_NAMES]
    return [*cases, ("vcpu_id", 16), ("cs_ar", 32), ("cs_limit", 32), ("gdt.limit", 16), ("idt.base", 64)]


@pytest.mark.parametrize(("field", "bits"), _too_wide_cases())
def test_encode_refuses_a_value_wider_than_its_field_and_names_it(field: str, bits: int) -> None:
    r = VcpuRegs()
    obj, _, name = field.rpartition(".")
    target = getattr(r, obj) if obj else r
    setattr(target, name, (1 << bits) - 1)
    r.to_struct()  # the widest value that fits is accepted
    setattr(target, name, 1 << bits)
    with pytest.raises(RegsFormatError, match=rf"{name}: 0x[0-9a-f]+ does not fit in {bits} bits"):
        r.to_struct()


@pytest.mark.parametrize("field", ["reserved", "reserved_64", "reserved_32"])
def test_encode_refuses_a_reserved_list_of_the_wrong_length_or_a_bool(field: str) -> None:
    r = VcpuRegs()
    good = list(getattr(r, field))
    setattr(r, field, [*good, 0])
    with pytest.raises(RegsFormatError, match=rf"{field}: expected a list of {len(good)} integers"):
        r.to_struct()
    setattr(r, field, [True, *good[1:]])
    with pytest.raises(RegsFormatError, match="expected an integer, got a boolean"):
        r.to_struct()
