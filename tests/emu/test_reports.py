"""Fault reports (issue: register-state tools): validator findings, code at RIP, strict emulator option."""

from __future__ import annotations

import struct

import pytest

from acrn import HsmError
from acrn.arch import CR0_PE, CR0_PG, CR4_LA57, CR4_PAE, EFER_LMA, CpuState, Segment
from acrn.device import EmulatedDevice
from acrn.dm.vmm import VmSession
from acrn.emu.guest_inspect import code_at_rip, disassemble, linear_to_gpa, read_linear
from acrn.emu.machine import Machine
from acrn.guests import GUESTS
from acrn.hsm import Hsm
from acrn.regs import VcpuRegs

pytest.importorskip("capstone")


@pytest.mark.kvm
def test_fault_report_carries_findings_and_disassembly() -> None:
    machine = Machine(accel="kvm")
    g = GUESTS["triple_fault"]
    regs = g.regs()
    regs.cs_ar = 0xCF9B  # acrn-dm's ELF-loader quirk: reserved AR bits 11:8 (acrn_sw_load_elf)
    with VmSession(mem_size=g.mem_size, device=EmulatedDevice(machine), accel="kvm") as s:
        s.load(g.load_gpa, g.image())
        s.set_regs(regs)
        result = s.run(timeout=30)
    machine.runtime.close()
    assert result.report is not None and result.reason == "shutdown"
    rules = {f["rule"] for f in result.report.findings}
    assert "arch.cs.reserved_11_8" in rules
    assert result.report.disassembly and "ud2" in result.report.disassembly[0]


@pytest.mark.soft
def test_halt_report_is_not_explained() -> None:
    """Only faults get findings: a clean halt must stay cheap."""
    machine = Machine(accel="soft")
    g = GUESTS["hello_protected"]
    with VmSession(mem_size=g.mem_size, device=EmulatedDevice(machine), accel="soft") as s:
        s.load(g.load_gpa, g.image())
        s.set_regs(g.regs())
        result = s.run(timeout=30)
    machine.runtime.close()
    assert result.report is not None and result.reason == "halt"
    assert result.report.findings == [] and result.report.disassembly == []


def _invalid_arch_regs() -> VcpuRegs:
    # Passes ACRN's CR0/CR4 check, fails VM entry: CS.L and CS.D both set in 64-bit mode.
    return VcpuRegs(cr0=0x80000031, cr4=0x20, ia32_efer=0x500, cs_ar=0xE09B, cs_limit=0xFFFFFFFF, rip=0x8000)


def test_emulator_accepts_arch_invalid_state_by_default_like_acrn() -> None:
    hsm = Hsm(EmulatedDevice(Machine()))
    vm = hsm.create_vm("lenient")
    vm.set_vcpu_regs(_invalid_arch_regs())
    assert vm.vcpu_state(0).cs.ar == 0xE09B
    hsm.close()


def test_strict_arch_emulator_refuses_arch_invalid_state_with_eperm() -> None:
    machine = Machine(strict_arch=True)
    hsm = Hsm(EmulatedDevice(machine))
    vm = hsm.create_vm("strict")
    with pytest.raises(HsmError) as e:
        vm.set_vcpu_regs(_invalid_arch_regs())
    assert e.value.errno == 1  # a hypervisor -1, as ACRN's own refusals
    assert vm.vcpu_state(0).cs.selector == 0xF000  # still the reset template
    vm.set_vcpu_regs(GUESTS["hello_long"].regs())  # a valid state still lands
    hsm.close()


def test_client_strict_refuses_reserved_fields_before_the_ioctl(caplog: pytest.LogCaptureFixture) -> None:
    hsm = Hsm(EmulatedDevice(Machine()))
    vm = hsm.create_vm("abi")
    regs = GUESTS["hello_protected"].regs()
    regs.reserved_32 = [0, 1, 0]
    caplog.set_level("DEBUG", logger="acrn.trace")
    with pytest.raises(HsmError) as e:
        vm.set_vcpu_regs(regs, strict=True)
    assert e.value.errno == 22 and "reserved_32" in str(e.value)
    assert "SET_VCPU_REGS" not in caplog.text  # refused before any ioctl was issued
    with pytest.raises(HsmError) as e2:
        vm.set_vcpu_regs(regs)  # without strict the driver itself says EINVAL
    assert e2.value.errno == 22
    hsm.close()


def _long_mode_memory() -> tuple[bytearray, CpuState]:
    mem = bytearray(0x400000)
    struct.pack_into("<Q", mem, 0x1000, 0x2000 | 3)  # PML4[0] -> PDPT
    struct.pack_into("<Q", mem, 0x2000, 0x3000 | 3)  # PDPT[0] -> PD
    struct.pack_into("<Q", mem, 0x3000, 0x200000 | 0x83)  # PD[0]: 2 MiB page at 2 MiB
    struct.pack_into("<Q", mem, 0x3008, 0x4000 | 3)  # PD[1] -> PT
    struct.pack_into("<Q", mem, 0x4000 + 5 * 8, 0x7000 | 3)  # PT[5]: 4 KiB page at 0x7000
    st = CpuState(cr0=CR0_PE | CR0_PG, cr4=CR4_PAE, efer=EFER_LMA | 0x100, cr3=0x1000)
    st.cs = Segment(8, 0, 0xFFFFFFFF, 0xA09B)
    return mem, st


def test_page_walk_follows_2m_and_4k_pages() -> None:
    mem, st = _long_mode_memory()

    def read(gpa: int, size: int) -> bytes | None:
        return bytes(mem[gpa : gpa + size]) if gpa + size <= len(mem) else None

    assert linear_to_gpa(st, 0x1234, read) == 0x201234
    assert linear_to_gpa(st, 0x205678, read) == 0x7678
    assert linear_to_gpa(st, 0x206000, read) is None  # PT[6] not present
    assert linear_to_gpa(st, 1 << 39, read) is None  # PML4[1] not present


def test_read_linear_crosses_pages_and_needs_every_byte_mapped() -> None:
    mem, st = _long_mode_memory()
    mem[0x201FFE:0x202002] = b"ABCD"  # the last 2 bytes of one 4 KiB page, the first 2 of the next

    def read(gpa: int, size: int) -> bytes | None:
        return bytes(mem[gpa : gpa + size]) if gpa + size <= len(mem) else None

    assert read_linear(st, 0x1FFE, 4, read) == b"ABCD"
    assert read_linear(st, 0x205FFE, 4, read) is None  # 0x206000 (PT[6]) is not mapped


def test_page_walk_with_five_levels_when_cr4_la57() -> None:
    mem, st = _long_mode_memory()
    # A PML5 at 0x8000 whose entry 1 (linear bit 48) leads to the same PML4.
    struct.pack_into("<Q", mem, 0x8000 + 8, 0x1000 | 3)
    st.cr3, st.cr4 = 0x8000, st.cr4 | CR4_LA57

    def read(gpa: int, size: int) -> bytes | None:
        return bytes(mem[gpa : gpa + size]) if gpa + size <= len(mem) else None

    assert linear_to_gpa(st, (1 << 48) | 0x1234, read) == 0x201234
    assert linear_to_gpa(st, (1 << 48) | 0x205678, read) == 0x7678
    assert linear_to_gpa(st, 0x1234, read) is None  # PML5[0] not present
    st.cr4 &= ~CR4_LA57  # the same CR3 walked with four levels finds nothing at 0x8000[0]
    assert linear_to_gpa(st, 0x1234, read) is None


def test_code_at_rip_and_disassembly_in_each_mode() -> None:
    mem = bytearray(0x10000)
    mem[0x8000:0x8003] = b"\x0f\x0b\xf4"

    def read(gpa: int, size: int) -> bytes | None:
        return bytes(mem[gpa : gpa + size]) if gpa + size <= len(mem) else None

    st = CpuState(rip=0x8000)
    code = code_at_rip(st, read, 3)
    assert code == b"\x0f\x0b\xf4"
    assert [line.split()[-1] for line in disassemble(code, 0x8000, st)] == ["ud2", "hlt"]
