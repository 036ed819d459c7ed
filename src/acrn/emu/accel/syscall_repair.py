"""Repair of user-mode SYSCALL on hosts whose KVM delivers it with the user CS and SS still loaded.

The development machines' KVM (nested kvm_pvm) carries out a SYSCALL from user mode except for
the segment switch: RCX = the return RIP, R11 = RFLAGS, RFLAGS &= ~FMASK and RIP = LSTAR, but CS
and SS keep the user selectors (CPL 3).  A kernel's entry code is supervisor-only, so the first
fetch at LSTAR faults: a #PF from user mode whose frame holds RIP = LSTAR, CS RPL 3, delivered
through the guest's IDT onto its RSP0 stack.  A stock Linux kills init there ("RIP:
0033:entry_SYSCALL_64"), so no user space can run.  Interrupt and exception delivery from user mode
is correct on the same host; only SYSCALL is affected.

The repair (per VM, :class:`SyscallRepair`):

1. **Trap.**  The first byte of the guest's #PF handler (IDT vector 14) becomes ``int3``, which this
   KVM cannot emulate in kernel mode: the vCPU stops with an emulation failure right after the
   fault was delivered, on the handler's first instruction (README.md, "The SYSCALL repair").
2. **Tell.**  The exception frame at RSP tells a broken SYSCALL (saved CS with RPL 3 and saved RIP
   = LSTAR) from a genuine page fault.
3. **Repair.**  A broken SYSCALL is completed as the architecture defines it (Intel SDM / AMD APM,
   SYSCALL in 64-bit mode): CS = STAR[47:32] & ~3 as a flat 64-bit ring-0 code segment, SS = that
   + 8 as a flat ring-0 data segment, RIP = LSTAR, RSP = the user RSP saved in the frame, RFLAGS =
   the saved (already masked) RFLAGS without RF.  RCX and R11 are already right.  The frame is
   left behind below RSP0, as any dead stack is.
4. **Pass.**  A genuine fault goes on with the handler's original first instruction: a NOP is
   skipped, ``clac``/``stac`` set RFLAGS.AC, anything else is stepped on the soft CPU with the
   original bytes restored for that step (:meth:`SyscallRepair.handle` says which).

The trap is installed once the guest runs in long mode with paging, LSTAR set and IDT[14] present
(for Linux: after ``trap_init()``, which sets the final #PF gate and then LSTAR).  If the byte is
overwritten (alternatives patching the handler, a reset reloading the image), the trap is dropped
and installed again from what is there then.  It is used only where :func:`probe` shows both the
defect and int3 exits in kernel mode (on a correct KVM, int3 would reach the guest as #BP).

With several vCPUs, a genuine fault whose first instruction needs the soft step restores the
original bytes for a moment, during which another vCPU's broken SYSCALL would not be caught; the
handlers of the kernels this targets start with a NOP, which never needs the step.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import logging
import mmap
import struct
import threading
import time
from dataclasses import dataclass
from typing import Final, Protocol

from acrn.arch import CR0_PG, EFER_LMA, CpuState, Segment
from acrn.emu.guest_inspect import linear_to_gpa, read_linear

log = logging.getLogger(__name__)

MSR_STAR: Final = 0xC0000081
MSR_LSTAR: Final = 0xC0000082
VECTOR_PF: Final = 14
INT3: Final = 0xCC
RFLAGS_RF: Final = 1 << 16
RFLAGS_AC: Final = 1 << 18
#: VMX access rights of the segments SYSCALL loads (SDM: flat, DPL 0; code 64-bit, data writable).
SYSCALL_CS_AR: Final = 0xA09B
SYSCALL_SS_AR: Final = 0xC093
#: How often an uninstalled trap is looked for (seconds; each look reads the vCPU state).
INSTALL_INTERVAL: Final = 0.05
#: The NOP encodings compilers and Linux's alternatives leave at a handler's start, longest first.
NOPS: Final = (
    bytes.fromhex("66 0f 1f 84 00 00 00 00 00"),
    bytes.fromhex("0f 1f 84 00 00 00 00 00"),
    bytes.fromhex("0f 1f 80 00 00 00 00"),
    bytes.fromhex("66 0f 1f 44 00 00"),
    bytes.fromhex("0f 1f 44 00 00"),
    bytes.fromhex("0f 1f 40 00"),
    bytes.fromhex("0f 1f 00"),
    bytes.fromhex("66 90"),
    bytes.fromhex("90"),
)
CLAC: Final = bytes.fromhex("0f 01 ca")
STAC: Final = bytes.fromhex("0f 01 cb")
_FRAME = struct.Struct("<6Q")  # error code, RIP, CS, RFLAGS, RSP, SS
#: The probe guest's console (polled 16550 at COM1) and its bound on exits.
COM1: Final = 0x3F8
LSR_THRE: Final = 0x20
PROBE_EXITS: Final = 20000


class GuestPhysical(Protocol):
    """Guest-physical memory the repair reads and patches."""

    def read(self, gpa: int, size: int) -> bytes | None: ...
    def write(self, gpa: int, data: bytes) -> bool: ...


class MsrVcpu(Protocol):
    """What the repair needs of a KVM vCPU."""

    def get_state(self) -> CpuState: ...
    def set_state(self, state: CpuState) -> None: ...
    def get_msrs(self, indices: list[int]) -> dict[int, int]: ...


class SlotMemory:
    """Guest-physical memory over the VM's slots (GPA ranges backed by process memory)."""

    def __init__(self) -> None:
        self._slots: dict[int, tuple[int, int, bool]] = {}  # gpa -> (size, host address, writable)
        self._lock = threading.Lock()

    def map(self, gpa: int, size: int, host: int, writable: bool) -> None:
        with self._lock:
            self._slots[gpa] = (size, host, writable)

    def unmap(self, gpa: int, size: int) -> None:
        with self._lock:
            if self._slots.get(gpa, (None,))[0] == size:
                del self._slots[gpa]

    def slots(self) -> list[tuple[int, int, int, bool]]:
        """(gpa, size, host address, writable) of every slot, by GPA."""
        with self._lock:
            return sorted((gpa, size, host, w) for gpa, (size, host, w) in self._slots.items())

    def _host(self, gpa: int, size: int, write: bool) -> int | None:
        with self._lock:
            for start, (length, host, writable) in self._slots.items():
                if start <= gpa and gpa + size <= start + length and (writable or not write):
                    return host + gpa - start
        return None

    def read(self, gpa: int, size: int) -> bytes | None:
        host = self._host(gpa, size, False)
        return None if host is None else ctypes.string_at(host, size)

    def write(self, gpa: int, data: bytes) -> bool:
        host = self._host(gpa, len(data), True)
        if host is None:
            return False
        ctypes.memmove(host, data, len(data))
        return True


class Outcome(enum.Enum):
    """What :meth:`SyscallRepair.handle` did; STEP asks the caller for a soft step."""

    REPAIRED = "syscall repaired"
    SKIPPED = "nop skipped"
    FLAG = "clac/stac applied"
    STEP = "soft step needed"


@dataclass
class _Trap:
    gva: int  # the #PF handler
    gpa: int
    original: bytes  # the handler's first bytes before the patch (up to 16, not across a page)


class SyscallRepair:
    """The trap on one VM's #PF handler and the repair of broken SYSCALLs (see the module doc)."""

    def __init__(self, memory: GuestPhysical) -> None:
        self.memory = memory
        self._trap: _Trap | None = None
        self._next_look = 0.0
        self._lock = threading.Lock()
        self.repaired = 0
        self.passed = 0

    @property
    def installed(self) -> bool:
        return self._trap is not None

    def forget(self) -> None:
        """A new boot (new register state): take the trap out and look for the handler again."""
        with self._lock:
            trap, self._trap = self._trap, None
            self._next_look = 0.0
            if trap is not None and self.memory.read(trap.gpa, 1) == b"\xcc":
                self.memory.write(trap.gpa, trap.original[:1])

    def poll(self, vcpu: MsrVcpu) -> None:
        """Before each run: keep the trap in place, or install it once the guest is ready."""
        trap = self._trap
        if trap is not None:
            if self.memory.read(trap.gpa, 1) == b"\xcc":
                return
            with self._lock:  # overwritten: the kernel patched its text, or memory was reloaded
                if self._trap is trap:
                    log.info("syscall repair: #PF handler at %#x rewritten; looking again", trap.gva)
                    self._trap = None
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + INSTALL_INTERVAL
        self.look(vcpu)

    def look(self, vcpu: MsrVcpu) -> None:
        """Install the trap now if the guest is ready (LSTAR set, long mode, IDT[14] present).

        Called at every emulation failure (a kernel's int3 self-test follows ``trap_init()``) and,
        at most every :data:`INSTALL_INTERVAL`, before a run.
        """
        if self._trap is not None or not vcpu.get_msrs([MSR_LSTAR]).get(MSR_LSTAR, 0):
            return
        st = vcpu.get_state()
        if not (st.cr0 & CR0_PG and st.efer & EFER_LMA):
            return
        if st.idtr.limit < VECTOR_PF * 16 + 15:
            return
        gate = read_linear(st, st.idtr.base + VECTOR_PF * 16, 16, self.memory.read)
        if gate is None or not gate[5] & 0x80:
            return
        lo, mid, hi = struct.unpack_from("<H", gate, 0)[0], struct.unpack_from("<H", gate, 6)[0], gate[8:12]
        handler = lo | mid << 16 | int.from_bytes(hi, "little") << 32
        gpa = linear_to_gpa(st, handler, self.memory.read)
        if gpa is None:
            return
        original = self.memory.read(gpa, min(16, 0x1000 - (gpa & 0xFFF)))
        if not original or original[0] == INT3:
            return  # not readable, or an int3 someone else placed (a text_poke in progress)
        with self._lock:
            if self._trap is not None or not self.memory.write(gpa, b"\xcc"):
                return
            self._trap = _Trap(handler, gpa, original)
        log.info("syscall repair: trap on the #PF handler at %#x (gpa %#x)", handler, gpa)

    def owns(self, rip: int) -> bool:
        """Whether an int3 emulation failure at ``rip`` is this trap's."""
        trap = self._trap
        return trap is not None and trap.gva == rip

    @property
    def original(self) -> bytes:
        """The trapped handler's original first bytes (for a soft step's name)."""
        trap = self._trap
        return b"" if trap is None else trap.original

    def handle(self, vcpu: MsrVcpu, st: CpuState) -> Outcome:
        """The vCPU stopped on the trap with state ``st``: repair, or pass the genuine fault on."""
        frame = read_linear(st, st.rsp, _FRAME.size, self.memory.read)
        if frame is not None:
            _err, rip, cs, rflags, rsp, _ss = _FRAME.unpack(frame)
            if cs & 3 == 3:
                msrs = vcpu.get_msrs([MSR_STAR, MSR_LSTAR])
                if rip == msrs.get(MSR_LSTAR):
                    kcs = (msrs.get(MSR_STAR, 0) >> 32) & 0xFFFC
                    st.cs = Segment(kcs, 0, 0xFFFFFFFF, SYSCALL_CS_AR)
                    st.ss = Segment(kcs + 8, 0, 0xFFFFFFFF, SYSCALL_SS_AR)
                    st.rip = rip
                    st.rsp = rsp
                    st.rflags = rflags & ~RFLAGS_RF
                    vcpu.set_state(st)
                    self.repaired += 1
                    return Outcome.REPAIRED
        self.passed += 1
        original = self.original
        for nop in NOPS:
            if original.startswith(nop):
                st.rip += len(nop)
                vcpu.set_state(st)
                return Outcome.SKIPPED
        if original.startswith(CLAC) or original.startswith(STAC):
            st.rflags = (st.rflags | RFLAGS_AC) if original[2] == 0xCB else (st.rflags & ~RFLAGS_AC)
            st.rip += 3
            vcpu.set_state(st)
            return Outcome.FLAG
        return Outcome.STEP

    def restore(self) -> None:
        """Put the original bytes back for a soft step (:meth:`rearm` after it)."""
        trap = self._trap
        if trap is not None:
            self.memory.write(trap.gpa, trap.original[:1])

    def rearm(self) -> None:
        """The soft step is over: the trap again."""
        trap = self._trap
        if trap is not None:
            self.memory.write(trap.gpa, b"\xcc")


# --------------------------------------------------------------------------------------------
# Does this host need it?
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeResult:
    """What the ``syscall_user`` guest showed on bare KVM."""

    int3_exits: bool  # int3 in kernel mode stops the vCPU (emulation failure) instead of #BP
    syscall_keeps_user_cs: bool  # a user SYSCALL faults at LSTAR with CS RPL 3
    output: str

    @property
    def needed(self) -> bool:
        """Whether the repair is needed here and can work."""
        return self.int3_exits and self.syscall_keeps_user_cs


def parse_syscall_user(output: str) -> list[dict[str, int]]:
    """The ``syscall_user`` guest's output as records: {"kind": 0 SYSCALL | 1 FAULT | 2 #BP, KEY: value}."""
    records: list[dict[str, int]] = []
    for line in output.splitlines():
        if line in ("SYSCALL", "FAULT", "#BP"):
            records.append({"kind": ("SYSCALL", "FAULT", "#BP").index(line)})
        elif "=" in line and records:
            key, _, value = line.partition("=")
            try:
                records[-1][key] = int(value, 16)
            except ValueError:
                continue
    return records


@functools.cache
def probe() -> ProbeResult:
    """Run ``syscall_user`` once on bare KVM (no fallback, no repair); cached per process."""
    from acrn.emu.accel.base import EmulationFailureExit, PioExit
    from acrn.emu.accel.kvm import KvmAccelerator
    from acrn.guests import GUESTS
    from acrn.rules import land_vcpu_regs

    guest = GUESTS["syscall_user"]
    out = bytearray()
    int3_exits = False
    ram = mmap.mmap(-1, guest.mem_size)
    try:  # no usable /dev/kvm: nothing to repair
        ok, why = KvmAccelerator.available()
        if not ok:
            return ProbeResult(False, False, f"(not run: {why})")
        image = guest.image()
        ram[guest.load_gpa : guest.load_gpa + len(image)] = image
        anchor = ctypes.c_char.from_buffer(ram)
        try:
            with KvmAccelerator().create_vm() as vm:
                vm.map_memory(0, guest.mem_size, ctypes.addressof(anchor))
                vcpu = vm.create_vcpu(0)
                vcpu.set_state(land_vcpu_regs(guest.regs().to_struct().vcpu_regs))
                for _ in range(PROBE_EXITS):
                    ex = vcpu.run()
                    if isinstance(ex, PioExit):
                        if ex.is_write and ex.port == COM1:
                            out += bytes([ex.value & 0xFF])
                        elif not ex.is_write:
                            vcpu.complete_read(LSR_THRE if ex.port == COM1 + 5 else 0)
                    elif isinstance(ex, EmulationFailureExit) and ex.insn_bytes[:1] == b"\xcc":
                        int3_exits = True
                        st = vcpu.get_state()
                        st.rip += 1
                        vcpu.set_state(st)
                    else:
                        break  # HLT (the guest's end) or anything unexpected
        finally:
            del anchor
    finally:
        ram.close()
    text = out.decode(errors="replace")
    lstar = guest.symbols().get("lstar", -1)
    broken = any(
        r["kind"] == 1 and r.get("VECTOR") == VECTOR_PF and r.get("CS", 0) & 3 == 3 and r.get("RIP") == lstar
        for r in parse_syscall_user(text)
    )
    log.info("syscall probe: int3 exits %s, SYSCALL keeps user CS %s", int3_exits, broken)
    return ProbeResult(int3_exits, broken, text)
