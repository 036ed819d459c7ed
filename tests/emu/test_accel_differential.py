"""KVM and the soft CPU agree: same state in, same state out; same guest, same registers and memory.

Register states are random but valid: built as ``acrn_vcpu_regs``, accepted by
``acrn.regs.validate(level="arch")`` and landed with ACRN's rules (``land_vcpu_regs``), in real,
protected and long mode.  Fields an engine cannot represent are normalised, each for a stated
reason (:func:`comparable`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from acrn import arch
from acrn.arch import CpuState
from acrn.dm.bus import IoBus
from acrn.dm.devices import Uart16550
from acrn.emu.accel.base import AccelVcpu, AccelVm, HaltExit, MmioExit, PioExit, VmExit
from acrn.guests import GUESTS, Guest, compute_output
from acrn.regs import VcpuRegs
from acrn.regs.validate import validate
from acrn.rules import land_vcpu_regs

pytestmark = [pytest.mark.kvm, pytest.mark.soft]

RAM = 2 << 20
PML4, PDPT, PD = 0x1000, 0x2000, 0x3000
HLT = 0xF4
ENGINES = ("kvm", "soft")


class Ram:
    """Anonymous guest RAM with a ctypes view for the accelerators' host address."""

    def __init__(self, size: int) -> None:
        self.map = mmap.mmap(-1, size)
        self.window = (ctypes.c_char * size).from_buffer(self.map)
        self.addr = ctypes.addressof(self.window)

    def close(self) -> None:
        del self.window
        self.map.close()


@dataclass
class Engine:
    name: str
    vm: AccelVm
    vcpu: AccelVcpu


@dataclass
class Pair:
    ram: Ram
    engines: list[Engine]


def _make_pair(ram: Ram) -> Pair:
    from acrn.emu.accel import get_accelerator

    engines = []
    for name in ENGINES:
        vm = get_accelerator(name).create_vm()
        vm.map_memory(0, RAM, ram.addr)
        engines.append(Engine(name, vm, vm.create_vcpu(0)))
    return Pair(ram, engines)


def _close_pair(pair: Pair) -> None:
    for e in pair.engines:
        e.vm.close()
    pair.ram.close()


@pytest.fixture(scope="module")
def hlt_pair() -> Iterator[Pair]:
    """One VM per engine on the same RAM: all HLT, plus identity page tables (2 MiB pages)."""
    ram = Ram(RAM)
    ram.map[:] = bytes([HLT]) * RAM
    ram.map[PML4 : PML4 + 0x1000] = struct.pack("<Q", PDPT | 3).ljust(0x1000, b"\0")
    ram.map[PDPT : PDPT + 0x1000] = struct.pack("<Q", PD | 3).ljust(0x1000, b"\0")
    ram.map[PD : PD + 0x1000] = b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(512))
    pair = _make_pair(ram)
    yield pair
    _close_pair(pair)


# ---- random valid register states ----------------------------------------------------------------

_CR0_OPTIONAL = [arch.CR0_MP, arch.CR0_EM, arch.CR0_TS, arch.CR0_WP, arch.CR0_AM, arch.CR0_NW, arch.CR0_CD]
_CR4_OPTIONAL = [
    arch.CR4_DE, arch.CR4_PSE, arch.CR4_PGE, arch.CR4_OSFXSR, arch.CR4_OSXMMEXCPT, arch.CR4_TSD,
    arch.CR4_MCE, arch.CR4_PCE,
]  # fmt: skip
# Flags that change nothing before HLT (no TF: a single-step trap; no VM: virtual-8086 mode).
_RFLAGS_OPTIONAL = [
    arch.RFLAGS_CF, arch.RFLAGS_PF, arch.RFLAGS_AF, arch.RFLAGS_ZF, arch.RFLAGS_SF, arch.RFLAGS_DF,
    arch.RFLAGS_OF, arch.RFLAGS_IF, 1 << 12, 1 << 13, 1 << 14, 1 << 18, 1 << 21,
]  # fmt: skip
_SELECTORS = [0, 0x08, 0x10, 0x18, 0x1B, 0x23, 0x2B, 0xFFF8]
_u64 = st.integers(0, 2**64 - 1)


def _bits(options: list[int]) -> st.SearchStrategy[int]:
    return st.lists(st.sampled_from(options), unique=True).map(sum)


@st.composite
def valid_regs(draw: st.DrawFn, mode: str) -> VcpuRegs:
    """An ``acrn_vcpu_regs`` in ``mode`` whose code (RIP, CS base) lies in the HLT-filled RAM."""
    r = VcpuRegs(cr0=arch.CR0_ET | arch.CR0_NE | draw(_bits(_CR0_OPTIONAL)), cr4=draw(_bits(_CR4_OPTIONAL)))
    r.rflags = draw(st.sampled_from([0, arch.RFLAGS_FIXED1])) | draw(_bits(_RFLAGS_OPTIONAL))
    for name in arch.GPR_NAMES:
        setattr(r, name, draw(_u64))
    for name in ("ds_sel", "es_sel", "fs_sel", "gs_sel", "ss_sel", "ldt_sel", "tr_sel"):
        setattr(r, name, draw(st.sampled_from(_SELECTORS)))
    r.gdt.base, r.gdt.limit = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 0xFFFF))
    r.idt.base, r.idt.limit = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 0xFFFF))
    r.rip = draw(st.integers(0x8000, 0xF000))
    if mode == "real":
        r.cs_sel = draw(st.sampled_from([0, 0x1000]))
        r.cs_base, r.cs_limit = r.cs_sel << 4, 0xFFFF
        r.cs_ar = draw(st.sampled_from([0x9B, 0x9F, 0x93]))
        return r
    r.cr0 |= arch.CR0_PE
    r.cr3 = draw(st.sampled_from([0, PML4, 0x7FF000]))
    r.cs_sel = draw(st.sampled_from([0x08, 0x10, 0x13]))
    r.cs_base = draw(st.sampled_from([0, 0x10000]))
    r.cs_ar = draw(st.sampled_from([0xC09B, 0xC09F, 0x409B, 0xCF9B, 0x809B, 0xC0FB, 0xC093 | 0x8]))
    r.cs_limit = draw(st.sampled_from([0xFFFFFFFF, 0xFFFFF]))
    if mode == "long":
        r.cs_base = 0
        r.cr0 |= arch.CR0_PG
        r.cr4 |= arch.CR4_PAE
        r.cr3 = PML4
        r.ia32_efer = arch.EFER_LME | arch.EFER_LMA | draw(st.sampled_from([0, arch.EFER_SCE, arch.EFER_NXE]))
        r.cs_ar = draw(st.sampled_from([0xA09B, 0x209B, 0xA0FB, 0x2099]))
        r.gdt.base = draw(_u64.filter(lambda b: b < 1 << 47 or b >= 0xFFFF_8000_0000_0000))
    return r


def comparable(state: CpuState) -> dict[str, Any]:
    """The state as a dict, with what is architecturally undefined left out.

    Both engines represent every field of the schema: the soft CPU has no unusable bit in QEMU's
    segment cache (it loads such a segment not-present) but keeps the exact access rights loaded
    for as long as the guest does not reload the segment, so states read back exactly.  Once code
    has run, only the unusable bit and the selector of an unusable segment are compared: the
    processor does not use its base, limit or other access rights, and they are not defined
    after the guest loads a null selector.
    """
    d = state.to_dict()
    for name in arch.SEGMENT_NAMES:
        seg = d[name]
        if seg["ar"] & arch.AR_UNUSABLE:
            d[name] = {"selector": seg["selector"], "unusable": True}
    return d


def _differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _landed(regs: VcpuRegs) -> CpuState:
    assume(not [f for f in validate(regs, level="arch") if f.severity == "error"])
    return land_vcpu_regs(regs.to_struct().vcpu_regs)


#: Segments a valid state may mark unusable (ACRN's landing never does; other loaders do).
_MAY_BE_UNUSABLE = ["ds", "es", "fs", "gs", "ldtr"]


def _with_unusable(state: CpuState, names: list[str]) -> CpuState:
    s = state.copy()
    for name in names:
        seg = s.segment(name)
        setattr(s, name, dataclasses.replace(seg, ar=seg.ar | arch.AR_UNUSABLE))
    return s


MODES = ["real", "protected", "long"]


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_loaded_state_reads_back_the_same_from_both_engines(
    hlt_pair: Pair, mode: str, data: st.DataObject
) -> None:
    state = _landed(data.draw(valid_regs(mode)))
    state = _with_unusable(state, data.draw(st.lists(st.sampled_from(_MAY_BE_UNUSABLE), unique=True)))
    back = {}
    for e in hlt_pair.engines:
        e.vcpu.set_state(state)
        back[e.name] = e.vcpu.get_state().to_dict()  # exact: nothing normalised
    assert not _differences(back["kvm"], back["soft"])
    assert back["soft"] == state.to_dict()  # and it is the state loaded


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hlt_leaves_the_same_state_on_both_engines(hlt_pair: Pair, mode: str, data: st.DataObject) -> None:
    state = _landed(data.draw(valid_regs(mode)))
    state = _with_unusable(state, data.draw(st.lists(st.sampled_from(_MAY_BE_UNUSABLE), unique=True)))
    after = {}
    for e in hlt_pair.engines:
        e.vcpu.set_state(state)
        ex = e.vcpu.run()
        assert ex == HaltExit(bool(state.rflags & arch.RFLAGS_IF)), f"{e.name}: {ex}"
        after[e.name] = comparable(e.vcpu.get_state())
    assert not _differences(after["kvm"], after["soft"])
    assert after["soft"]["rip"] == state.rip + 1


# ---- the built-in guests ---------------------------------------------------------------------------


@dataclass
class GuestRun:
    exit: VmExit
    state: dict[str, Any]
    memory: bytes
    io: list[tuple[int, int, bool, int]]
    output: bytes


def run_builtin(name: str, guest: Guest, regs: VcpuRegs) -> GuestRun:
    """Run ``guest`` on engine ``name`` to its first non-I/O exit, with a 16550 for its output."""
    from acrn.emu.accel import get_accelerator

    ram = Ram(guest.mem_size)
    vm = get_accelerator(name).create_vm()
    try:
        ram.map[:] = bytes(guest.memory())
        vm.map_memory(0, guest.mem_size, ram.addr)
        vcpu = vm.create_vcpu(0)
        vcpu.set_state(land_vcpu_regs(regs.to_struct().vcpu_regs))
        out = bytearray()
        bus = IoBus()
        Uart16550(output=out.extend).attach(bus)
        io: list[tuple[int, int, bool, int]] = []
        for _ in range(100_000):
            ex = vcpu.run()
            if isinstance(ex, PioExit):
                if ex.is_write:
                    bus.try_pio_write(ex.port, ex.size, ex.value)
                    io.append((ex.port, ex.size, True, ex.value))
                else:
                    value = bus.pio_read(ex.port, ex.size)
                    vcpu.complete_read(value)
                    io.append((ex.port, ex.size, False, value))
            elif isinstance(ex, MmioExit):
                raise AssertionError(f"{guest.name} on {name}: unexpected {ex}")
            else:
                break
        else:
            raise AssertionError(f"{guest.name} on {name}: still running")
        return GuestRun(ex, comparable(vcpu.get_state()), bytes(ram.map), io, bytes(out))
    finally:
        vm.close()
        ram.close()


BUILTIN = ["compute", "probe_protected", "probe_long", "hello_real", "hello_protected", "hello_long"]


@pytest.mark.parametrize("guest", BUILTIN)
def test_builtin_guest_leaves_the_same_registers_and_memory_on_both_engines(guest: str) -> None:
    g = GUESTS[guest]
    regs = g.regs(rcx=300) if guest == "compute" else g.regs()
    kvm, soft = (run_builtin(name, g, regs) for name in ENGINES)
    assert kvm.exit == soft.exit == HaltExit(False)
    assert kvm.output == soft.output
    want = compute_output(300) if guest == "compute" else g.expected_output
    assert want is None or soft.output.decode() == want  # the probes print what they find
    assert kvm.io == soft.io  # the same accesses, in the same order, with the same values
    assert not _differences(kvm.state, soft.state)
    if kvm.memory != soft.memory:
        first = next(i for i, (a, b) in enumerate(zip(kvm.memory, soft.memory, strict=True)) if a != b)
        raise AssertionError(
            f"memory differs first at {first:#x}: kvm {kvm.memory[first : first + 16].hex()} "
            f"soft {soft.memory[first : first + 16].hex()}"
        )
