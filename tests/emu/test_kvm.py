"""Rules of the KVM accelerator that the conformance suite does not cover (KVM-specific ones).

Pure rules (the access-rights mapping, the CPUID table) run without
/dev/kvm; the rest are marked ``kvm``.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator

import pytest

from acrn.arch import Segment
from acrn.emu.accel import kvm
from acrn.emu.accel import kvm_abi as abi
from acrn.emu.accel.base import EmulationFailureExit, HaltExit, KickExit, MmioExit, PioExit

from . import accel_guests as g

JOIN_TIMEOUT = 60.0


# ---- access rights <-> kvm_segment -----------------------------------------------------------
@pytest.mark.parametrize(
    ("ar", "field", "value"),
    [
        (0xB, "type", 0xB),
        (1 << 4, "s", 1),
        (3 << 5, "dpl", 3),
        (1 << 7, "present", 1),
        (1 << 12, "avl", 1),
        (1 << 13, "l", 1),
        (1 << 14, "db", 1),
        (1 << 15, "g", 1),
        (1 << 16, "unusable", 1),
    ],
)
def test_segment_to_kvm_maps_each_access_rights_bit(ar: int, field: str, value: int) -> None:
    ks = abi.kvm_segment()
    kvm.segment_to_kvm(Segment(0x10, 0x1000, 0xFFFF, ar), ks)
    fields = ("type", "s", "dpl", "present", "avl", "l", "db", "g", "unusable")
    assert {f: getattr(ks, f) for f in fields} == {f: (value if f == field else 0) for f in fields}
    assert (ks.selector, ks.base, ks.limit) == (0x10, 0x1000, 0xFFFF)


def test_segment_to_kvm_ignores_reserved_access_rights_bits_11_8() -> None:
    ks = abi.kvm_segment()
    kvm.segment_to_kvm(Segment(0, 0, 0, 0xF00 | 0x93), ks)
    assert kvm.segment_from_kvm(ks).ar == 0x93


def test_segment_from_kvm_is_the_inverse_mapping() -> None:
    for ar in (0x9B, 0x93, 0x82, 0x8B, 0xC09B, 0xA09B, 0xC093, 0x808B, 0x10000, 0x1F0FF):
        ks = abi.kvm_segment()
        kvm.segment_to_kvm(Segment(1, 2, 3, ar), ks)
        assert kvm.segment_from_kvm(ks) == Segment(1, 2, 3, ar & ~0xF00)


# ---- CPUID ----------------------------------------------------------------------------------------
_SUPPORTED = [
    (0, 0, 0, 0xD, 0x68747541, 0x444D4163, 0x69746E65),
    (1, 0, 0, 0x830F10, 0x00000800, 0xFFFFFFFF, 0x178BFBFF),
    (7, 0, 1, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
    (7, 1, 1, 0xFFFFFFFF, 0, 0, 0),
    (0xB, 0, 1, 1, 2, 0x100, 0),
    (0xD, 0, 1, 7, 0x340, 0x340, 0),
    (0x40000000, 0, 0, 0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D),
    (0x40000001, 0, 0, 0xFFFF, 0, 0, 0),
    (0x80000001, 0, 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF),
]


def _leaf(table: list[tuple[int, ...]], fn: int, idx: int = 0) -> tuple[int, ...]:
    (hit,) = [e for e in table if e[0] == fn and e[1] == idx]
    return hit


def test_guest_cpuid_masks_cx16_xsave_osxsave_and_avx() -> None:
    t = kvm.build_guest_cpuid(_SUPPORTED, vcpu_id=0, tsc_khz=1)
    ecx1 = _leaf(t, 1)[5]
    for bit in (12, 13, 26, 27, 28, 29):  # FMA CX16 XSAVE OSXSAVE AVX F16C
        assert not ecx1 & (1 << bit), bit
    assert ecx1 & (1 << 0)  # SSE3 and the rest stay
    assert not _leaf(t, 7)[4] & (1 << 5)  # AVX2
    assert not _leaf(t, 7)[4] & (1 << 16)  # AVX512F
    assert not _leaf(t, 7, 1)[3] & (1 << 4)  # AVX-VNNI
    assert not [e for e in t if e[0] == 0xD]  # no XSAVE state enumeration without XSAVE


def test_guest_cpuid_sets_hypervisor_bit_and_apic_id() -> None:
    t = kvm.build_guest_cpuid(_SUPPORTED, vcpu_id=3, tsc_khz=1)
    assert _leaf(t, 1)[5] & (1 << 31)
    assert _leaf(t, 1)[4] >> 24 == 3
    assert _leaf(t, 0xB)[6] == 3


def test_guest_cpuid_replaces_kvm_leaves_with_acrn_leaves() -> None:
    t = kvm.build_guest_cpuid(_SUPPORTED, vcpu_id=0, tsc_khz=2_500_000, acrn_features=1)
    sig = _leaf(t, 0x40000000)
    assert sig[3] == 0x40000010
    assert struct.pack("<3I", *sig[4:7]) == b"ACRNACRNACRN"
    assert _leaf(t, 0x40000001)[3:] == (1, 0, 0, 0)
    assert _leaf(t, 0x40000010)[3:] == (2_500_000, 0, 0, 0)
    assert not [e for e in t if 0x40000000 <= e[0] <= 0x400000FF and e[4] == 0x4B4D564B]


# ---- fixtures needing /dev/kvm ----------------------------------------------------------------------
@pytest.fixture
def vm() -> Iterator[kvm.KvmVm]:
    ok, why = kvm.KvmAccelerator.available()
    if not ok:
        pytest.skip(why)
    v = kvm.KvmAccelerator(tsc_khz=1_234_567).create_vm()
    yield v
    v.close()


@pytest.fixture
def ram() -> Iterator[g.GuestRam]:
    r = g.GuestRam()
    yield r
    r.close()


def _vcpu(vm: kvm.KvmVm, ram: g.GuestRam, code: bytes, state: object = None) -> kvm.KvmVcpu:
    vm.map_memory(0, g.RAM_SIZE, ram.addr)
    ram.write(g.CODE_GPA, code)
    vcpu = vm.create_vcpu(0)
    vcpu.set_state(state or g.real_mode_state())  # type: ignore[arg-type]
    return vcpu


@pytest.mark.kvm
def test_available_checks_api_version_and_caps() -> None:
    ok, why = kvm.KvmAccelerator.available()
    assert ok, why
    assert "API 12" in why


@pytest.mark.kvm
def test_guest_sees_acrn_cpuid_signature_and_tsc_khz(vm: kvm.KvmVm, ram: g.GuestRam) -> None:
    vcpu = _vcpu(vm, ram, g.CPUID_PROBE)
    values = []
    while isinstance(e := vcpu.run(), PioExit):
        values.append(e.value)
    assert isinstance(e, HaltExit)
    assert values[0] == 0x40000010
    assert struct.pack("<3I", *values[1:4]) == b"ACRNACRNACRN"
    assert values[4] == 1_234_567
    assert values[5] & (1 << 31)  # hypervisor present
    assert not values[5] & (1 << 13)  # CX16 masked takes effect here


@pytest.mark.kvm
def test_irqchip_absorbs_hlt_and_kick_ends_it(ram: g.GuestRam) -> None:
    vm = kvm.KvmAccelerator(irqchip=True).create_vm()
    try:
        vcpu = _vcpu(vm, ram, g.CLI_HLT)
        result: list[object] = []
        t = threading.Thread(target=lambda: result.append(vcpu.run()))
        t.start()
        vcpu.kick()
        t.join(JOIN_TIMEOUT)
        assert not t.is_alive()
        assert result == [KickExit()]  # never HaltExit: HLT sleeps in the kernel with an irqchip
    finally:
        vm.close()


# ---- I/O completion and state ------------------------------------------------------------------------
@pytest.mark.kvm
def test_get_state_after_out_shows_the_next_instruction(vm: kvm.KvmVm, ram: g.GuestRam) -> None:
    vcpu = _vcpu(vm, ram, g.OUT_IN)
    assert vcpu.run() == PioExit(0x10, 1, True, 0x41)
    assert vcpu.get_state().rip == g.CODE_GPA + 4  # mov (2 bytes) + out imm8 (2 bytes)
    assert vcpu.run() == PioExit(0x3F8, 2, True, 0x1234)  # and the guest continues from there


@pytest.mark.kvm
def test_get_state_before_complete_read_shows_the_in_instruction(vm: kvm.KvmVm, ram: g.GuestRam) -> None:
    vcpu = _vcpu(vm, ram, g.OUT_IN)
    for _ in range(3):
        vcpu.run()
    assert vcpu.run() == PioExit(0x11, 1, False)
    assert vcpu.get_state().rip == g.CODE_GPA + 0x13  # the IN itself: it waits for its value
    vcpu.complete_read(0x77)
    assert vcpu.get_state().rbx & 0xFF == 0  # not yet executed: mov %al,%bl comes after
    assert vcpu.get_state().rax & 0xFF == 0x77


@pytest.mark.kvm
def test_set_state_after_io_exit_discards_the_pending_completion(vm: kvm.KvmVm, ram: g.GuestRam) -> None:
    vcpu = _vcpu(vm, ram, g.OUT_IN)
    assert vcpu.run() == PioExit(0x10, 1, True, 0x41)
    ram.write(0x3000, g.CLI_HLT)
    vcpu.set_state(g.real_mode_state(rip=0x3000))
    assert vcpu.run() == HaltExit(False)
    assert vcpu.get_state().rip == 0x3002  # not 0x3000 + 2 more for the old OUT


@pytest.mark.kvm
def test_unanswered_read_reads_zero(vm: kvm.KvmVm, ram: g.GuestRam) -> None:
    vcpu = _vcpu(vm, ram, g.MMIO)
    vcpu.run()
    assert vcpu.run() == MmioExit(0x20020, 4, False)
    assert isinstance(vcpu.run(), HaltExit)
    assert vcpu.get_state().rax == 0


@pytest.mark.kvm
def test_complete_read_without_a_read_exit_raises(vm: kvm.KvmVm, ram: g.GuestRam) -> None:
    vcpu = _vcpu(vm, ram, g.OUT_IN)
    with pytest.raises(RuntimeError):
        vcpu.complete_read(1)
    vcpu.run()  # an OUT
    with pytest.raises(RuntimeError):
        vcpu.complete_read(1)


@pytest.mark.kvm
def test_emulation_failure_reports_instruction_bytes(vm: kvm.KvmVm, ram: g.GuestRam) -> None:
    # This machine's KVM cannot emulate cmpxchg16b (README.md, "Booting Linux"); on real hardware the guest
    # halts.
    g.write_page_tables(ram)
    vcpu = _vcpu(vm, ram, g.LM_CMPXCHG16B, g.long_mode_state())
    e = vcpu.run()
    if isinstance(e, HaltExit):
        pytest.skip("this KVM executes cmpxchg16b: no emulation failure to observe")
    assert isinstance(e, EmulationFailureExit)
    assert e.suberror == abi.KVM_INTERNAL_ERROR_EMULATION
    assert e.insn_bytes.startswith(bytes.fromhex("f0480fc70f"))


# ---- memory slots -----------------------------------------------------------------------------------
@pytest.mark.kvm
def test_unmap_memory_turns_ram_into_mmio(vm: kvm.KvmVm, ram: g.GuestRam) -> None:
    vm.map_memory(0, 0x8000, ram.addr)
    vm.map_memory(0x8000, 0x8000, ram.addr + 0x8000)
    vm.unmap_memory(0x8000, 0x8000)
    ram.write(g.CODE_GPA, g.RO_WRITE)
    vcpu = vm.create_vcpu(0)
    vcpu.set_state(g.real_mode_state())
    assert vcpu.run() == MmioExit(0x8000, 2, True, 0x1234)


@pytest.mark.kvm
def test_unmapped_slot_is_reused(vm: kvm.KvmVm, ram: g.GuestRam) -> None:
    vm.map_memory(0, 0x1000, ram.addr)
    vm.map_memory(0x1000, 0x1000, ram.addr + 0x1000)
    vm.unmap_memory(0, 0x1000)
    vm.map_memory(0x2000, 0x1000, ram.addr + 0x2000)
    assert sorted(vm._slots.values()) == [0, 1]


@pytest.mark.kvm
@pytest.mark.parametrize(("gpa", "size", "off"), [(0x10, 0x1000, 0), (0, 0x10, 0), (0, 0x1000, 8), (0, 0, 0)])
def test_map_memory_rejects_unaligned_or_empty(
    vm: kvm.KvmVm, ram: g.GuestRam, gpa: int, size: int, off: int
) -> None:
    with pytest.raises(ValueError):
        vm.map_memory(gpa, size, ram.addr + off)


@pytest.mark.kvm
def test_unmap_of_unknown_range_raises(vm: kvm.KvmVm) -> None:
    with pytest.raises(ValueError):
        vm.unmap_memory(0, 0x1000)


@pytest.mark.kvm
def test_overlapping_map_is_refused_by_kvm(vm: kvm.KvmVm, ram: g.GuestRam) -> None:
    vm.map_memory(0, 0x2000, ram.addr)
    with pytest.raises(OSError, match="KVM_SET_USER_MEMORY_REGION"):
        vm.map_memory(0x1000, 0x2000, ram.addr)


# ---- vCPU lifecycle ---------------------------------------------------------------------------------
@pytest.mark.kvm
def test_duplicate_vcpu_id_is_refused(vm: kvm.KvmVm) -> None:
    vm.create_vcpu(0)
    with pytest.raises(OSError, match="KVM_CREATE_VCPU"):
        vm.create_vcpu(0)


@pytest.mark.kvm
def test_run_after_close_raises(vm: kvm.KvmVm, ram: g.GuestRam) -> None:
    vcpu = _vcpu(vm, ram, g.CLI_HLT)
    vcpu.close()
    with pytest.raises(ValueError):
        vcpu.run()


@pytest.mark.kvm
def test_close_while_running_stops_the_vcpu(ram: g.GuestRam) -> None:
    before = set(os.listdir("/proc/self/fd"))
    vm = kvm.KvmAccelerator().create_vm()
    vcpu = _vcpu(vm, ram, g.SPIN)
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(vcpu.run()))
    t.start()
    vm.close()
    t.join(JOIN_TIMEOUT)
    assert not t.is_alive()
    assert result == [KickExit()] or result == []  # a run that starts after close raises instead
    assert set(os.listdir("/proc/self/fd")) <= before


def test_install_kick_handler_off_the_main_thread_raises() -> None:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            kvm.install_kick_handler()
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join(JOIN_TIMEOUT)
    assert len(errors) == 1


def test_install_kick_handler_makes_the_kick_signal_safe() -> None:
    kvm.install_kick_handler()
    assert kvm.kick_handler_installed()
