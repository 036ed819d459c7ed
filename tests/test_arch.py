"""acrn.arch's CpuState helpers that the rest of the emulator leans on."""

from __future__ import annotations

from acrn.arch import SEGMENT_NAMES, CpuState, DescriptorTable, Segment


def sample_state() -> CpuState:
    st = CpuState(cr0=0x11, cr3=0x1000, efer=0x500, rip=0x1234, rsp=0x8000, r15=7)
    for i, n in enumerate(SEGMENT_NAMES):
        setattr(st, n, Segment(0x8 * (i + 1), 0x100 * i, 0xFFFF + i, 0x93 + i))
    st.gdtr = DescriptorTable(0x5000, 0x27)
    st.idtr = DescriptorTable(0x6000, 0xFFF)
    return st


def test_copy_is_equal_and_of_the_same_classes() -> None:
    st = sample_state()
    c = st.copy()
    assert c == st and c.to_dict() == st.to_dict()
    assert type(c) is CpuState and all(type(c.segment(n)) is Segment for n in SEGMENT_NAMES)
    assert type(c.gdtr) is DescriptorTable and type(c.idtr) is DescriptorTable


def test_copy_shares_no_mutable_part_with_the_original() -> None:
    st = sample_state()
    c = st.copy()
    for n in SEGMENT_NAMES:
        assert c.segment(n) is not st.segment(n)
        c.segment(n).base = 0xDEAD
    c.gdtr.base = c.idtr.limit = 1
    c.rip = 0
    assert st == sample_state()
