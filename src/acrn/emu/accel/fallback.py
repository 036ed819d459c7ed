"""KVM emulation-failure fallback, and a hybrid soft-then-KVM accelerator for booting kernels.

The development machines' KVM emulates guest code in software and gives up on instructions its
emulator lacks (``KVM_EXIT_INTERNAL_ERROR``, suberror 1): a stock kernel stops in turn on
``cmpxchg16b``, ``xrstor``, ``int3``, ``clac``/``stac``, ``popcnt`` (README.md, "Booting Linux").
:class:`FallbackAccelerator` wraps the KVM accelerator; on such an exit its vCPU:

1. handles the few instructions whose effect is a flag or an exception directly: ``int3`` (RIP past
   it, #BP injected through the guest IDT with ``KVM_SET_VCPU_EVENTS``), ``clac``/``stac`` (RFLAGS.AC
   and RIP), because the soft CPU does not know SMAP and #BP must be delivered by KVM anyway;
2. executes any other instruction on the soft accelerator (unicorn), on the same guest memory and
   registers: the state is loaded with RFLAGS.TF set, the soft CPU runs until the single-step trap
   after that one instruction, and the resulting state goes back to KVM;
3. injects the exception the instruction raised when it faults on the soft CPU (an invalid
   opcode is #UD, as on hardware), instead of executing it; ``INT n`` with n >= 32 (which this KVM
   cannot emulate either) is injected as an interrupt with RIP past it, after the check INT n
   makes and an external interrupt does not (gate DPL < CPL is #GP(n * 8 + 2));
4. resumes under KVM.  Port I/O or MMIO done by the stepped instruction is reported to the caller
   like any exit (the step finishes at the next ``run``).

Every event is counted per instruction (:attr:`FallbackStats.events`) for ``acrn run -v``.

Where this KVM delivers a user-mode SYSCALL with the user CS/SS still loaded, the VM also gets the
:mod:`acrn.emu.accel.syscall_repair` trap (decided by its probe, once per process; ``syscall_repair``
forces it on or off): its int3 on the guest's #PF handler is handled here before any other.
What crosses over: the :class:`~acrn.arch.CpuState` plus the x87 and SSE registers as an
:class:`~acrn.arch.FpuState` (``KVM_GET/SET_FPU``: ST0-7, control/status/tag words, last
opcode/IP/DP, XMM0-15, MXCSR; this KVM cannot emulate x87 arithmetic or most SSE integer
instructions - pshufb, paddd, pxor, palignr - so the soft CPU must compute them on the guest's
values), and the SYSCALL/SYSENTER MSRs, PAT, KERNEL_GS_BASE and TSC_AUX (:data:`CARRIED_MSRS`).  The error code of an
exception raised on the soft CPU is not known (0 is given) and #PF's CR2 is the soft CPU's.

:class:`HybridAccelerator` runs a vCPU on the soft accelerator first and moves it to KVM (with the
fallback) for good at the first event the soft CPU cannot handle: an exception (it has no IDT
delivery), an instruction it does not know, a HLT with interrupts enabled, or any interrupt line or
MSI driven for the VM (it has no interrupt controller).  For a bzImage the decompressor, which
this KVM runs very slowly (about 85 s), then runs at the soft CPU's speed.
Application processors start on KVM (INIT/SIPI needs its local APICs).  An ``INT3``, ``INTO`` or
``INT n`` the soft CPU stops after is rewound (by its length: 1 or 2 bytes), so that KVM, and the
fallback, execute it again and deliver it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from acrn.arch import CR0_PE, EFER_LMA, RFLAGS_TF, CpuState, FpuState
from acrn.emu.accel.base import (
    Accelerator,
    AccelVcpu,
    AccelVm,
    EmulationFailureExit,
    EntryFailureExit,
    HaltExit,
    KickExit,
    MmioExit,
    PioExit,
    ShutdownExit,
    VmExit,
)
from acrn.emu.accel.syscall_repair import Outcome, SlotMemory, SyscallRepair, probe
from acrn.emu.guest_inspect import read_linear

log = logging.getLogger(__name__)

RFLAGS_AC: Final = 1 << 18
RFLAGS_VM: Final = 1 << 17
_U64: Final = (1 << 64) - 1
VECTOR_DB: Final = 1
VECTOR_BP: Final = 3
VECTOR_OF: Final = 4
VECTOR_UD: Final = 6
VECTOR_GP: Final = 13
#: Vectors from 32 up are interrupts: delivered with KVM's interrupt injection, not as exceptions.
FIRST_INTERRUPT_VECTOR: Final = 32
#: Exceptions that push an error code (0 is given: the soft CPU does not report it).
ERROR_CODE_VECTORS: Final = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
#: Soft-CPU exception names (soft.EXCEPTION_NAMES) back to vectors.
_VECTORS: Final = {
    "#DE": 0, "#DB": 1, "NMI": 2, "#BP": 3, "#OF": 4, "#BR": 5, "#UD": 6, "#NM": 7, "#DF": 8,
    "#TS": 10, "#NP": 11, "#SS": 12, "#GP": 13, "#PF": 14, "#MF": 16, "#AC": 17, "#MC": 18,
    "#XM": 19, "#VE": 20, "#CP": 21,
}  # fmt: skip
#: Instructions handled without the soft CPU: prefix-free encodings.
INSN_INT3: Final = b"\xcc"
INSN_CLAC: Final = b"\x0f\x01\xca"
INSN_STAC: Final = b"\x0f\x01\xcb"


def soft_exception_vector(ex: VmExit) -> tuple[int, int] | None:
    """(vector, rip) of a soft-CPU exception report: ``ShutdownExit("exception #GP at rip=0x...")``,
    or ``"exception vector 128 at rip=0x..."`` for a vector without a name (an ``INT n``)."""
    if not isinstance(ex, ShutdownExit) or not ex.detail.startswith("exception "):
        return None
    parts = ex.detail.split()
    if len(parts) == 5 and parts[1] == "vector" and parts[2].isdigit():
        vector: int | None = int(parts[2])
        parts = parts[:1] + parts[2:]
    else:
        vector = _VECTORS.get(parts[1]) if len(parts) > 1 else None
    if vector is None or len(parts) < 4 or not parts[3].startswith("rip="):
        return None
    try:
        return vector, int(parts[3][4:], 16)
    except ValueError:
        return None


def software_interrupt_length(code_before: bytes, vector: int) -> int:
    """The length of the instruction that raised ``vector`` as a trap, from the (up to) two bytes
    before the RIP the soft CPU reports after it: ``INT3`` (CC) and ``INTO`` (CE) 1, ``INT n``
    (CD n) 2; 0 when they are not such an instruction (a fault: RIP is at the instruction).

    Only #BP, #OF and vectors from 32 up are taken for traps: the soft CPU reports INT n and a
    fault of the same vector alike, and a #GP or #PF at an instruction that happens to follow
    the bytes CD 0D or CD 0E is far likelier than an INT 13 or INT 14.
    """
    if vector not in (VECTOR_BP, VECTOR_OF) and vector < FIRST_INTERRUPT_VECTOR:
        return 0
    if vector == VECTOR_BP and code_before[-1:] == b"\xcc":
        return 1
    if vector == VECTOR_OF and code_before[-1:] == b"\xce":
        return 1
    if code_before[-2:] == bytes((0xCD, vector)):
        return 2
    return 0


def mnemonic(insn: bytes) -> str:
    """A short name for an instruction (capstone's mnemonic when installed, else its first bytes)."""
    if insn.startswith(INSN_INT3):
        return "int3"
    if insn.startswith(INSN_CLAC):
        return "clac"
    if insn.startswith(INSN_STAC):
        return "stac"
    try:
        import capstone

        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        for i in md.disasm(insn, 0, 1):
            return str(i.mnemonic)
    except Exception:  # capstone absent or the bytes do not decode
        pass
    return insn[:4].hex() or "?"


@dataclass
class FallbackStats:
    """Emulation failures handled, per instruction, and how."""

    events: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    switches: int = 0  # hybrid: vCPUs moved from the soft CPU to KVM
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total(self) -> int:
        return sum(self.events.values())

    def count(self, what: str, injected: str | None = None) -> None:
        with self.lock:
            self.events[what] += 1
            if injected is not None:
                self.injected[injected] += 1

    def summary(self) -> str:
        if not self.total and not self.switches:
            return "no emulation fallbacks"
        parts = ", ".join(f"{k} {v}" for k, v in self.events.most_common())
        text = f"emulation fallbacks: {self.total} ({parts})"
        if self.injected:
            text += "; exceptions injected: " + ", ".join(f"{k} {v}" for k, v in self.injected.most_common())
        if self.failed:
            text += f"; unhandled {self.failed}"
        if self.switches:
            text += f"; soft->KVM switches {self.switches}"
        return text


class _SoftSide:
    """The soft accelerator VM that mirrors the wrapper's memory slots, created on first use.

    The slots themselves are kept in ``memory`` (also what the SYSCALL repair reads and patches).
    """

    def __init__(self, memory: SlotMemory) -> None:
        self._vm: AccelVm | None = None
        self.memory = memory
        self._lock = threading.Lock()

    def map(self, gpa: int, size: int, host: int, writable: bool) -> None:
        with self._lock:
            self.memory.map(gpa, size, host, writable)
            if self._vm is not None:
                self._vm.map_memory(gpa, size, host, writable=writable)

    def unmap(self, gpa: int, size: int) -> None:
        with self._lock:
            self.memory.unmap(gpa, size)
            if self._vm is not None:
                self._vm.unmap_memory(gpa, size)

    def vcpu(self, vcpu_id: int) -> AccelVcpu:
        with self._lock:
            if self._vm is None:
                from acrn.emu.accel import get_accelerator

                self._vm = get_accelerator("soft").create_vm()
                for gpa, size, host, writable in self.memory.slots():
                    self._vm.map_memory(gpa, size, host, writable=writable)
            return self._vm.create_vcpu(vcpu_id)

    def close(self) -> None:
        with self._lock:
            if self._vm is not None:
                self._vm.close()
                self._vm = None


class FallbackVcpu:
    """A KVM vCPU whose emulation failures are completed by the soft CPU (see the module doc)."""

    def __init__(self, vm: FallbackVm, kvm_vcpu: AccelVcpu) -> None:
        self.vcpu_id = kvm_vcpu.vcpu_id
        self._vm = vm
        self.kvm = kvm_vcpu
        self._soft: AccelVcpu | None = None
        self._stepping = False  # a soft step waits for its I/O exit to be completed
        self._step_tf = False  # the guest's own TF before the step
        self._step_what = ""
        self._step_failure: EmulationFailureExit | None = None
        self._fpu = False  # the x87/SSE registers went to the soft CPU for this step
        self._rearm = False  # the step ran the #PF handler's original first instruction
        self._read_target: AccelVcpu = kvm_vcpu

    def __getattr__(self, name: str) -> Any:
        # Optional capabilities (multiprocessor, power_on, ...) are the KVM vCPU's.
        return getattr(self.kvm, name)

    # -- AccelVcpu ------------------------------------------------------------------------------
    def set_state(self, state: CpuState) -> None:
        self._stepping = False
        if self._vm.repair is not None and self.vcpu_id == 0:
            self._vm.repair.forget()  # a new boot: its handler is looked for again
        self.kvm.set_state(state)

    def get_state(self) -> CpuState:
        if self._stepping and self._soft is not None:
            return self._soft.get_state()
        return self.kvm.get_state()

    def complete_read(self, value: int) -> None:
        self._read_target.complete_read(value)

    def kick(self) -> None:
        self.kvm.kick()
        if self._soft is not None:
            self._soft.kick()

    def close(self) -> None:
        if self._soft is not None:
            self._soft.close()
            self._soft = None
        self.kvm.close()

    def run(self) -> VmExit:
        while True:
            if self._stepping:
                ex = self._continue_step()
                if ex is not None:
                    return ex
                continue
            self._read_target = self.kvm
            if self._vm.repair is not None:
                self._vm.repair.poll(self.kvm)  # type: ignore[arg-type]
            ex = self.kvm.run()
            if not isinstance(ex, EmulationFailureExit) or ex.suberror != 1:
                return ex
            handled = self._handle_failure(ex)
            if handled is not None:
                return handled

    # -- the fallback --------------------------------------------------------------------------
    def _soft_vcpu(self) -> AccelVcpu:
        if self._soft is None:
            self._soft = self._vm.soft.vcpu(self.vcpu_id)
        return self._soft

    def _handle_failure(self, ex: EmulationFailureExit) -> VmExit | None:
        """Complete the instruction KVM could not; None to resume KVM, or an exit to return."""
        insn = ex.insn_bytes
        stats = self._vm.stats
        repair = self._vm.repair
        if repair is not None and not repair.installed:
            repair.look(self.kvm)  # type: ignore[arg-type]
        if repair is not None and insn.startswith(INSN_INT3):
            st = self.kvm.get_state()
            if repair.owns(st.rip):
                outcome = repair.handle(self.kvm, st)  # type: ignore[arg-type]
                if outcome is Outcome.REPAIRED:
                    stats.count("syscall (repaired)")
                    return None
                if outcome is not Outcome.STEP:
                    stats.count("#PF trap")
                    return None
                repair.restore()  # the original first instruction, on the soft CPU
                self._rearm = True
                insn = repair.original
        if insn.startswith(INSN_INT3):
            st = self.kvm.get_state()
            st.rip += 1  # #BP is a trap: the handler returns past the int3
            self.kvm.set_state(st)
            self._inject(VECTOR_BP)
            stats.count("int3", "#BP")
            return None
        if insn.startswith(INSN_CLAC) or insn.startswith(INSN_STAC):
            st = self.kvm.get_state()
            st.rflags = (st.rflags | RFLAGS_AC) if insn[2] == 0xCB else (st.rflags & ~RFLAGS_AC)
            st.rip += 3
            self.kvm.set_state(st)
            stats.count(mnemonic(insn))
            return None
        # Everything else: one instruction on the soft CPU.
        st = self.kvm.get_state()
        self._step_tf = bool(st.rflags & RFLAGS_TF)
        st.rflags |= RFLAGS_TF
        soft = self._soft_vcpu()
        soft.set_state(st)
        self._fpu = copy_fpu_to_soft(self.kvm, soft)
        copy_msrs(self.kvm, soft)
        self._stepping = True
        self._step_what = mnemonic(insn) if insn else "?"
        self._step_failure = ex
        return self._continue_step()

    def _continue_step(self) -> VmExit | None:
        """Run the soft CPU to the end of the stepped instruction; see :meth:`_handle_failure`."""
        soft = self._soft_vcpu()
        self._read_target = soft
        ex = soft.run()
        if isinstance(ex, PioExit | MmioExit | KickExit):
            return ex  # the instruction's own I/O (or a kick); the step goes on at the next run
        self._stepping = False
        self._read_target = self.kvm
        if self._rearm:
            self._rearm = False
            if self._vm.repair is not None:
                self._vm.repair.rearm()
        stats = self._vm.stats
        exc = soft_exception_vector(ex)
        if (exc is not None and exc[0] == VECTOR_DB) or isinstance(ex, HaltExit):
            st = soft.get_state()
            if not self._step_tf:
                st.rflags &= ~RFLAGS_TF
            self.kvm.set_state(st)
            if self._fpu:
                copy_fpu_to_kvm(soft, self.kvm)
            copy_msrs(soft, self.kvm)
            stats.count(self._step_what)
            return None
        if exc is not None:
            vector = exc[0]
            st = soft.get_state()  # faults: RIP at the instruction; traps (INT n): past it
            if not self._step_tf:
                st.rflags &= ~RFLAGS_TF
            self.kvm.set_state(st)
            if vector >= FIRST_INTERRUPT_VECTOR:
                self._software_interrupt(st, vector)
            else:
                self._inject(vector)
            stats.count(self._step_what, _name(vector))
            return None
        if isinstance(ex, EmulationFailureExit):
            self._inject(VECTOR_UD)  # the soft CPU does not know it either: undefined opcode
            stats.count(self._step_what, "#UD")
            return None
        stats.failed += 1
        failure = self._step_failure
        log.warning("fallback for %s ended with %r", self._step_what, ex)
        if isinstance(ex, EntryFailureExit) and failure is not None:
            return failure
        return ex

    def _inject(self, vector: int, error_code: int | None = None) -> None:
        inject = getattr(self.kvm, "inject_exception", None)
        if inject is None:
            raise RuntimeError("the primary accelerator cannot inject exceptions")
        if error_code is None and vector in ERROR_CODE_VECTORS:
            error_code = 0
        inject(vector, error_code)

    def _software_interrupt(self, st: CpuState, vector: int) -> None:
        """``INT n`` (n >= 32) the soft CPU stopped after (``st``: RIP past it): deliver it on KVM.

        KVM injects it as an interrupt, which skips the one check INT n makes that an external
        interrupt does not: outside real mode a gate with DPL < CPL is #GP(n * 8 + 2), raised at
        the instruction.  That check is made here from the guest's IDT.
        """
        if st.cr0 & CR0_PE and not st.rflags & RFLAGS_VM:
            entry = 16 if st.efer & EFER_LMA else 8
            gate = None
            if vector * entry + entry - 1 <= st.idtr.limit:
                gate = read_linear(st, st.idtr.base + vector * entry, 8, self._vm.soft.memory.read)
            cpl = st.cs.selector & 3
            if gate is not None and (gate[5] >> 5) & 3 < cpl:
                st.rip -= 2  # a fault: back at the CD n
                self.kvm.set_state(st)
                self._inject(VECTOR_GP, vector * 8 + 2)
                return
        inject = getattr(self.kvm, "inject_interrupt", None)
        if inject is None:
            raise RuntimeError("the primary accelerator cannot inject interrupts")
        inject(vector)


def fpu_from_kvm(fpu: Any) -> FpuState:
    """``struct kvm_fpu`` (FXSAVE layout: ``fpr[i]`` is ST(i), ``ftwx`` abridged) as an FpuState."""
    return FpuState(
        fcw=fpu.fcw,
        fsw=fpu.fsw,
        ftw=fpu.ftwx,
        fop=fpu.last_opcode,
        fip=fpu.last_ip,
        fdp=fpu.last_dp,
        st=[bytes(fpu.fpr[i])[:10] for i in range(8)],
        xmm=[bytes(fpu.xmm[i]) for i in range(16)],
        mxcsr=fpu.mxcsr,
    )


def fpu_to_kvm(state: FpuState, fpu: Any) -> None:
    """Write ``state`` into a ``struct kvm_fpu`` (the 6 bytes above each 80-bit value are zero)."""
    fpu.fcw, fpu.fsw, fpu.ftwx = state.fcw, state.fsw, state.ftw
    fpu.last_opcode, fpu.last_ip, fpu.last_dp = state.fop, state.fip, state.fdp
    for i in range(8):
        fpu.fpr[i][:] = list(state.st[i][:10].ljust(16, b"\0"))
    for i in range(16):
        fpu.xmm[i][:] = list(state.xmm[i])
    fpu.mxcsr = state.mxcsr


#: MSRs that cross with the state (EFER is in CpuState; FS/GS bases are segment bases): the
#: SYSENTER and SYSCALL MSRs, PAT, KERNEL_GS_BASE and TSC_AUX.  A guest that programs them on the
#: soft CPU (the hybrid's first phase) keeps them on KVM, and a stepped instruction sees them.
CARRIED_MSRS: Final = (0x174, 0x175, 0x176, 0x277, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084,
                       0xC0000102, 0xC0000103)  # fmt: skip


def copy_msrs(src: AccelVcpu, dst: AccelVcpu) -> None:
    """:data:`CARRIED_MSRS` from one accelerator's vCPU to the other's (where both can)."""
    get_msrs = getattr(src, "get_msrs", None)
    set_msrs = getattr(dst, "set_msrs", None)
    if get_msrs is None or set_msrs is None:
        return
    values = get_msrs(list(CARRIED_MSRS))
    if values:
        set_msrs(values)


def copy_fpu_to_soft(kvm: AccelVcpu, soft: AccelVcpu) -> bool:
    """KVM's x87 and SSE registers into the soft CPU; False when either side cannot."""
    get_fpu = getattr(kvm, "get_fpu", None)
    set_state = getattr(soft, "set_fpu_state", None)
    if get_fpu is None or set_state is None:
        return False
    set_state(fpu_from_kvm(get_fpu()))
    return True


def copy_fpu_to_kvm(soft: AccelVcpu, kvm: AccelVcpu) -> None:
    """The soft CPU's x87 and SSE registers back into KVM."""
    get_fpu = getattr(kvm, "get_fpu", None)
    set_fpu = getattr(kvm, "set_fpu", None)
    get_state = getattr(soft, "get_fpu_state", None)
    if get_fpu is None or set_fpu is None or get_state is None:
        return
    fpu = get_fpu()
    fpu_to_kvm(get_state(), fpu)
    set_fpu(fpu)


def _name(vector: int) -> str:
    for k, v in _VECTORS.items():
        if v == vector:
            return k
    return f"vector {vector}"


class FallbackVm:
    """A KVM VM (``primary``) plus the soft VM its vCPUs fall back on; other attributes are KVM's."""

    def __init__(self, primary: AccelVm, stats: FallbackStats, *, repair: bool = False) -> None:
        self.primary = primary
        self.stats = stats
        self.soft = _SoftSide(SlotMemory())
        self.name = primary.name
        self.repair = SyscallRepair(self.soft.memory) if repair else None

    def __getattr__(self, name: str) -> Any:
        # Interrupt controllers and the VM fd are the KVM VM's (acrn.emu.irq reaches them here).
        return getattr(self.primary, name)

    def map_memory(self, gpa: int, size: int, host_addr: int, *, writable: bool = True) -> None:
        self.primary.map_memory(gpa, size, host_addr, writable=writable)
        self.soft.map(gpa, size, host_addr, writable)

    def unmap_memory(self, gpa: int, size: int) -> None:
        self.primary.unmap_memory(gpa, size)
        self.soft.unmap(gpa, size)

    def create_vcpu(self, vcpu_id: int, apic_id: int | None = None) -> AccelVcpu:
        return FallbackVcpu(self, self.primary.create_vcpu(vcpu_id, apic_id))

    def close(self) -> None:
        self.soft.close()
        self.primary.close()


class FallbackAccelerator:
    """KVM with the emulation-failure fallback; ``stats`` counts events across its VMs."""

    name = "kvm"

    def __init__(self, primary: Accelerator | None = None, *, syscall_repair: bool | None = None) -> None:
        if primary is None:
            from acrn.emu.accel.kvm import KvmAccelerator

            primary = KvmAccelerator(irqchip=True)
        self.primary = primary
        self.stats = FallbackStats()
        #: None: decided by :func:`acrn.emu.accel.syscall_repair.probe` at the first VM.
        self.syscall_repair = syscall_repair

    def _repair(self) -> bool:
        if self.syscall_repair is None:
            self.syscall_repair = probe().needed
        return self.syscall_repair

    @staticmethod
    def available() -> tuple[bool, str]:
        from acrn.emu.accel import availability

        ok, why = availability("kvm")
        if not ok:
            return ok, why
        ok2, why2 = availability("soft")
        return ok2, f"{why}; fallback on {why2}"

    def create_vm(self) -> FallbackVm:
        return FallbackVm(self.primary.create_vm(), self.stats, repair=self._repair())


# --------------------------------------------------------------------------------------------
# Hybrid: soft first, then KVM
# --------------------------------------------------------------------------------------------
class HybridVcpu(FallbackVcpu):
    """Starts on the soft CPU; moves to KVM (with the fallback) at the first event it cannot handle."""

    def __init__(self, vm: HybridVm, kvm_vcpu: AccelVcpu) -> None:
        super().__init__(vm, kvm_vcpu)
        self._hvm = vm
        self.on_soft = True
        self._soft_io_pending = False  # the soft CPU waits for an I/O completion: no switch now

    def set_state(self, state: CpuState) -> None:
        self._stepping = False
        self._soft_io_pending = False
        if self._vm.repair is not None and self.vcpu_id == 0:
            self._vm.repair.forget()
        # A (re)load of the BSP starts on the soft CPU again (a guest reset re-runs the loader);
        # APs always run on KVM (they start through INIT/SIPI, which needs its local APICs).
        self.on_soft = self.vcpu_id == 0 and not self._hvm.switch_requested.is_set()
        if self.on_soft:
            soft = self._soft_vcpu()
            soft.set_state(state)
            set_fpu_state = getattr(soft, "set_fpu_state", None)
            if set_fpu_state is not None:
                set_fpu_state(FpuState())  # the reset state KVM gives a new vCPU (FNINIT, MXCSR 0x1F80)
        else:
            self.kvm.set_state(state)

    def power_on(self, *, wait_for_sipi: bool) -> None:
        if wait_for_sipi and self.on_soft:
            self._switch()  # INIT/SIPI needs KVM's local APIC
        power_on = getattr(self.kvm, "power_on", None)
        if power_on is not None:
            power_on(wait_for_sipi=wait_for_sipi)

    def get_state(self) -> CpuState:
        if self.on_soft:
            return self._soft_vcpu().get_state()
        return super().get_state()

    def _switch(self, rewind: int = 0) -> None:
        soft = self._soft_vcpu()
        st = soft.get_state()
        st.rip -= rewind
        self.kvm.set_state(st)
        copy_fpu_to_kvm(soft, self.kvm)
        copy_msrs(soft, self.kvm)
        self.on_soft = False
        self._hvm.stats.switches += 1
        log.info("vCPU %d: soft CPU -> KVM at rip=%#x", self.vcpu_id, st.rip)

    def run(self) -> VmExit:
        while self.on_soft:
            # Never while an I/O instruction is half done: KVM would execute it a second time.
            if self._hvm.switch_requested.is_set() and not self._soft_io_pending:
                self._switch()
                break
            soft = self._soft_vcpu()
            self._read_target = soft
            ex = soft.run()
            if not isinstance(ex, KickExit):  # a kick leaves an outstanding I/O outstanding
                self._soft_io_pending = isinstance(ex, PioExit | MmioExit)
            if isinstance(ex, PioExit | MmioExit | KickExit):
                return ex
            if isinstance(ex, HaltExit) and not ex.interrupts_enabled:
                return ex
            exc = soft_exception_vector(ex)
            rewind = 0
            if exc is not None:
                # INT3, INTO and INT n are reported past themselves: KVM (and the fallback)
                # redoes them; a fault's RIP is already at its instruction.
                st = soft.get_state()
                before = read_linear(st, (st.cs.base + st.rip - 2) & _U64, 2, self._vm.soft.memory.read)
                rewind = software_interrupt_length(before or b"", exc[0])
            self._switch(rewind)
        return super().run()


class HybridVm(FallbackVm):
    """A :class:`FallbackVm` whose vCPUs start on the soft CPU; interrupts move them all to KVM."""

    def __init__(self, primary: AccelVm, stats: FallbackStats, *, repair: bool = False) -> None:
        super().__init__(primary, stats, repair=repair)
        self.name = "hybrid"
        self.switch_requested = threading.Event()
        self._vcpus: list[HybridVcpu] = []

    def create_vcpu(self, vcpu_id: int, apic_id: int | None = None) -> AccelVcpu:
        vcpu = HybridVcpu(self, self.primary.create_vcpu(vcpu_id, apic_id))
        self._vcpus.append(vcpu)
        return vcpu

    def _to_kvm(self) -> None:
        if not self.switch_requested.is_set():
            self.switch_requested.set()
            for v in self._vcpus:
                if v.on_soft and v._soft is not None:
                    v._soft.kick()

    # Interrupt delivery exists only on KVM: any use moves every vCPU there.
    def set_ioapic_line(self, pin: int, level: bool) -> None:
        self._to_kvm()
        self.primary.set_ioapic_line(pin, level)  # type: ignore[attr-defined]

    def set_pic_line(self, pin: int, level: bool) -> None:
        self._to_kvm()
        self.primary.set_pic_line(pin, level)  # type: ignore[attr-defined]

    def signal_msi(self, address: int, data: int) -> bool:
        self._to_kvm()
        return bool(self.primary.signal_msi(address, data))  # type: ignore[attr-defined]


class HybridAccelerator(FallbackAccelerator):
    """Soft CPU first, KVM (with the fallback) from the first exception or interrupt on."""

    name = "hybrid"

    def create_vm(self) -> HybridVm:
        return HybridVm(self.primary.create_vm(), self.stats, repair=self._repair())


__all__ = [
    "FallbackAccelerator",
    "FallbackStats",
    "FallbackVcpu",
    "FallbackVm",
    "HybridAccelerator",
    "HybridVcpu",
    "HybridVm",
    "mnemonic",
    "soft_exception_vector",
]
