"""The `arch` validation level agrees with a real VM entry (issue: register-state tools).

Property: any state the `arch` level accepts, landed as ACRN lands it, is accepted by KVM and runs a
one-instruction guest (HLT) without an entry failure; states it rejects for CR0/CR4/EFER consistency
are refused by KVM.  Guest RAM is 2 MiB filled with HLT, plus identity page tables for long mode.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from acrn import arch
from acrn.emu.accel.base import AccelVcpu, EntryFailureExit, HaltExit
from acrn.regs import VcpuRegs
from acrn.regs.validate import validate
from acrn.rules import land_vcpu_regs
from acrn.user_memory import HostMemory

pytestmark = pytest.mark.kvm

PML4, PDPT, PD = 0x1000, 0x2000, 0x3000


@pytest.fixture(scope="module")
def vcpu() -> Iterator[AccelVcpu]:
    from acrn.emu.accel.kvm import KvmAccelerator

    mem = HostMemory(2 << 20)
    mem.write(0, b"\xf4" * mem.size)
    mem.write(PML4, struct.pack("<Q", PDPT | 3).ljust(4096, b"\0"))
    mem.write(PDPT, struct.pack("<Q", PD | 3).ljust(4096, b"\0"))
    mem.write(PD, b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(512)))
    vm = KvmAccelerator().create_vm()
    vm.map_memory(0, mem.size, mem.address)
    v = vm.create_vcpu(0)
    yield v
    v.close()
    vm.close()
    mem.close()


CR0_OPTIONAL = [arch.CR0_MP, arch.CR0_EM, arch.CR0_TS, arch.CR0_WP, arch.CR0_AM, arch.CR0_NW, arch.CR0_CD]
CR4_OPTIONAL = [arch.CR4_DE, arch.CR4_PSE, arch.CR4_PGE, arch.CR4_OSFXSR, arch.CR4_OSXMMEXCPT, arch.CR4_TSD]
FLAGS = [
    arch.RFLAGS_CF,
    arch.RFLAGS_PF,
    arch.RFLAGS_AF,
    arch.RFLAGS_ZF,
    arch.RFLAGS_SF,
    arch.RFLAGS_DF,
    arch.RFLAGS_OF,
]


def _bits(options: list[int]) -> st.SearchStrategy[int]:
    return st.lists(st.sampled_from(options), unique=True).map(lambda xs: sum(xs))


@st.composite
def states(draw: st.DrawFn) -> VcpuRegs:
    mode = draw(st.sampled_from(["real", "protected", "long"]))
    r = VcpuRegs(cr0=arch.CR0_ET | arch.CR0_NE | draw(_bits(CR0_OPTIONAL)), cr4=draw(_bits(CR4_OPTIONAL)))
    r.rflags = draw(st.sampled_from([0, arch.RFLAGS_FIXED1])) | draw(_bits(FLAGS))
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r15"):
        setattr(r, name, draw(st.integers(0, 2**64 - 1)))
    for name in ("ds_sel", "es_sel", "fs_sel", "gs_sel", "ss_sel"):
        setattr(r, name, draw(st.sampled_from([0, 0x10, 0x18, 0x1B, 0x23])))
    r.rip = draw(st.integers(0x8000, 0xF000))
    if mode == "real":
        r.cs_ar, r.cs_limit, r.cs_sel = draw(st.sampled_from([0x9B, 0x9F, 0x93])), 0xFFFF, 0
    else:
        r.cr0 |= arch.CR0_PE
        r.cs_sel = draw(st.sampled_from([0x08, 0x10]))
        r.cs_ar = draw(st.sampled_from([0xC09B, 0xC09F, 0x409B, 0xCF9B, 0xE09B, 0x809B, 0xC0FB]))
        r.cs_limit = draw(st.sampled_from([0xFFFFFFFF, 0xFFFFF, 0xFFFF]))
    if mode == "long":
        r.cr0 |= arch.CR0_PG
        r.cr4 |= arch.CR4_PAE
        r.cr3 = PML4
        r.ia32_efer = arch.EFER_LME | arch.EFER_LMA
        r.cs_ar = draw(st.sampled_from([0xA09B, 0x209B, 0xE09B, 0xA0FB]))
    return r


def _errors(regs: VcpuRegs) -> list[str]:
    return [f.rule for f in validate(regs, level="arch") if f.severity == "error"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(regs=states())
def test_states_the_arch_level_accepts_enter_and_run_hlt(vcpu: AccelVcpu, regs: VcpuRegs) -> None:
    assume(not _errors(regs))  # only accepted states are claimed to run
    vcpu.set_state(land_vcpu_regs(regs.to_struct().vcpu_regs))
    ex = vcpu.run()
    assert isinstance(ex, HaltExit), f"{ex} for {regs.to_json_dict(hex_values=True)}"


CR_EFER_BREAKERS = {
    "arch.cr0.pg_pe": VcpuRegs(cr0=0x80000030, cs_ar=0x9B, cs_limit=0xFFFF, rip=0x8000),
    "arch.cr0.nw_cd": VcpuRegs(cr0=0x20000031, cs_ar=0xC09B, cs_limit=0xFFFFFFFF, rip=0x8000),
    "arch.ia32e.pg": VcpuRegs(
        cr0=0x31, cr4=0x20, ia32_efer=0x500, cs_ar=0xA09B, cs_limit=0xFFFFFFFF, rip=0x8000
    ),
    "arch.ia32e.pae": VcpuRegs(
        cr0=0x80000031, ia32_efer=0x500, cs_ar=0xA09B, cs_limit=0xFFFFFFFF, rip=0x8000, cr3=PML4
    ),
    "arch.efer.lme_lma": VcpuRegs(
        cr0=0x80000031, cr4=0x20, ia32_efer=0x100, cs_ar=0xC09B, cs_limit=0xFFFFFFFF, rip=0x8000, cr3=PML4
    ),
}


@pytest.mark.parametrize("rule", sorted(CR_EFER_BREAKERS))
def test_states_rejected_for_cr_efer_consistency_are_refused_by_kvm(vcpu: AccelVcpu, rule: str) -> None:
    regs = CR_EFER_BREAKERS[rule]
    assert rule in _errors(regs)
    vcpu.set_state(land_vcpu_regs(regs.to_struct().vcpu_regs))
    assert isinstance(vcpu.run(), EntryFailureExit)
