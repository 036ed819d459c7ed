"""The guest's CPUID carries ACRN's hypervisor leaves, TSC frequency included (Linux's acrn.c reads it)."""

from __future__ import annotations

import struct

from acrn.emu.accel.kvm import build_guest_cpuid


def test_leaf_40000010_eax_is_tsc_khz_and_signature_leaf_names_acrn() -> None:
    supported = [
        (1, 0, 0, 0, 0, 0, 0),
        (0x40000000, 0, 0, 0x40000001, *struct.unpack("<3I", b"KVMKVMKVM\0\0\0")),
    ]
    table = {
        (fn, idx): regs for fn, idx, _f, *regs in build_guest_cpuid(supported, vcpu_id=0, tsc_khz=2596124)
    }
    eax, ebx, ecx, edx = table[(0x40000000, 0)]
    assert eax == 0x40000010 and struct.pack("<3I", ebx, ecx, edx) == b"ACRNACRNACRN"
    assert table[(0x40000010, 0)][0] == 2596124
    assert table[(1, 0)][2] & (1 << 31)  # the hypervisor bit: Linux looks for the leaves only then


def test_kvm_leaves_are_replaced_and_acrn_leaves_reserved_registers_are_zero() -> None:
    supported = [
        (1, 0, 0, 0, 0, 0, 0),
        (0x40000000, 0, 0, 0x40000001, *struct.unpack("<3I", b"KVMKVMKVM\0\0\0")),
        (0x40000001, 0, 0, 0x1234, 0, 0, 0),
        (0x40000010, 0, 0, 7, 8, 9, 10),
    ]
    entries = build_guest_cpuid(supported, vcpu_id=0, tsc_khz=1000, acrn_features=0)
    hv = [(fn, idx, *regs) for fn, idx, _f, *regs in entries if 0x40000000 <= fn <= 0x400000FF]
    assert sorted(fn for fn, *_ in hv) == [0x40000000, 0x40000001, 0x40000010]
    table = {fn: tuple(regs) for fn, _idx, *regs in hv}
    assert table[0x40000001] == (0, 0, 0, 0)  # a User VM: no ACRN_FEATURE_PRIVILEGED_VM
    assert table[0x40000010] == (1000, 0, 0, 0)
