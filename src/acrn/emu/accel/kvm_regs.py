"""An architectural :class:`acrn.arch.CpuState` <-> KVM's ``kvm_sregs`` and ``kvm_regs``.

Segments: VMX access rights <-> ``struct kvm_segment`` (Linux arch/x86/kvm/vmx/vmx.c:
vmx_segment_access_rights and vmx_get_segment do the same in the kernel).
"""

from __future__ import annotations

from typing import Final

from acrn.arch import CpuState, DescriptorTable, Segment
from acrn.emu.accel import kvm_abi as abi

_SEGMENTS: Final = (("cs", "cs"), ("ss", "ss"), ("ds", "ds"), ("es", "es"), ("fs", "fs"), ("gs", "gs"),
                    ("ldtr", "ldt"), ("tr", "tr"))  # fmt: skip
_KVM_GPRS: Final = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip


def segment_to_kvm(seg: Segment, out: abi.kvm_segment) -> None:
    """Fill ``out`` from a segment whose ``ar`` is in VMX access-rights format."""
    ar = seg.ar
    out.base = seg.base & 0xFFFFFFFFFFFFFFFF
    out.limit = seg.limit & 0xFFFFFFFF
    out.selector = seg.selector & 0xFFFF
    out.type = ar & 0xF
    out.s = (ar >> 4) & 1
    out.dpl = (ar >> 5) & 3
    out.present = (ar >> 7) & 1
    out.avl = (ar >> 12) & 1
    out.l = (ar >> 13) & 1
    out.db = (ar >> 14) & 1
    out.g = (ar >> 15) & 1
    out.unusable = (ar >> 16) & 1
    out.padding = 0


def segment_from_kvm(ks: abi.kvm_segment) -> Segment:
    """The inverse of :func:`segment_to_kvm`."""
    ar = (
        (ks.type & 0xF)
        | (ks.s & 1) << 4
        | (ks.dpl & 3) << 5
        | (ks.present & 1) << 7
        | (ks.avl & 1) << 12
        | (ks.l & 1) << 13
        | (ks.db & 1) << 14
        | (ks.g & 1) << 15
        | (ks.unusable & 1) << 16
    )
    return Segment(selector=ks.selector, base=ks.base, limit=ks.limit, ar=ar)


def state_to_kvm(state: CpuState, sregs: abi.kvm_sregs, regs: abi.kvm_regs) -> None:
    """Fill ``sregs`` and ``regs`` from ``state``; the fields of ``sregs`` that a CpuState does not
    carry (apic_base, cr8, the pending-interrupt bitmap) are left as they are."""
    for ours, theirs in _SEGMENTS:
        segment_to_kvm(getattr(state, ours), getattr(sregs, theirs))
    for ours, theirs in (("gdtr", "gdt"), ("idtr", "idt")):
        t: DescriptorTable = getattr(state, ours)
        kt = getattr(sregs, theirs)
        kt.base = t.base & 0xFFFFFFFFFFFFFFFF
        kt.limit = t.limit & 0xFFFF
    sregs.cr0 = state.cr0
    sregs.cr2 = state.cr2
    sregs.cr3 = state.cr3
    sregs.cr4 = state.cr4
    sregs.efer = state.efer
    for n in _KVM_GPRS:
        setattr(regs, n, getattr(state, n) & 0xFFFFFFFFFFFFFFFF)
    regs.rip = state.rip & 0xFFFFFFFFFFFFFFFF
    regs.rflags = state.rflags & 0xFFFFFFFFFFFFFFFF


def state_from_kvm(sregs: abi.kvm_sregs, regs: abi.kvm_regs) -> CpuState:
    """The architectural state in ``sregs`` and ``regs`` (the inverse of :func:`state_to_kvm`)."""
    st = CpuState()
    for ours, theirs in _SEGMENTS:
        setattr(st, ours, segment_from_kvm(getattr(sregs, theirs)))
    st.gdtr = DescriptorTable(sregs.gdt.base, sregs.gdt.limit)
    st.idtr = DescriptorTable(sregs.idt.base, sregs.idt.limit)
    st.cr0 = sregs.cr0
    st.cr2 = sregs.cr2
    st.cr3 = sregs.cr3
    st.cr4 = sregs.cr4
    st.efer = sregs.efer
    for n in _KVM_GPRS:
        setattr(st, n, getattr(regs, n))
    st.rip = regs.rip
    st.rflags = regs.rflags
    return st
