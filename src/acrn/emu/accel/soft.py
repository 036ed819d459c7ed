"""The soft accelerator: vCPUs executed by the unicorn 2.1.x CPU emulator (QEMU's TCG).

Design (the interface returns exits from ``run()`` and takes read values in ``complete_read``,
but unicorn delivers port I/O and MMIO through callbacks in the middle of a translated block):

* Each vCPU owns one ``UC_MODE_64`` engine.  By default a private **engine thread** sits in
  ``emu_start``; a port-I/O or MMIO callback hands its exit to ``run()`` through a queue and
  blocks until the next ``run()``; a read callback then returns the value given to
  ``complete_read``.  The guest instruction therefore completes exactly as on hardware.  Stopping
  the engine at the callback instead is not sound: unicorn's ``emu_stop`` lets the rest of the
  translated block run (measured: the instructions after an OUT executed before the stop), and
  writing RIP in a hook does not leave the block either.
* The thread handoff costs tens of microseconds per exit, so a caller that can handle I/O where
  it happens sets an I/O handler (:class:`~acrn.emu.accel.base.SyncIoVcpu`): ``run()`` then calls
  ``emu_start`` on the caller's own thread and every callback calls the handler synchronously;
  no engine thread exists.
* Unicorn's engine mode fixes how registers are accessed (the mode given to ``uc_open``), so the engine is
  always ``UC_MODE_64`` and the mode comes from CR0/EFER/CS as loaded by :meth:`SoftVcpu.set_state`.
  Hidden segment state is written into unicorn's CPU context (``soft_layout``), because the
  register API cannot set it.  ``ctl_set_tlb_mode(UC_TLB_CPU)`` makes unicorn walk the guest's
  page tables.
* Guest RAM is mapped with ``mem_map_ptr`` onto the caller's host memory (no copy); every
  guest-physical page below 2^36 that is not RAM is an ``mmio_map`` region whose callbacks become
  :class:`MmioExit`.
* ``kick()`` sets a flag and calls ``emu_stop`` (thread-safe in unicorn: it raises the TCG
  exit request checked at every block entry).  A stop issued in the instant before
  ``emu_start`` resets its stop request is lost, so ``kick`` repeats it until the engine
  acknowledges.

Limitations (unicorn is "a pure CPU emulator", in its own words), each reported, never silent:

* No exception or interrupt delivery through the IDT/IVT: any exception raised by the guest
  (``#GP``, ``#PF``, ``int n``, ...) ends the run with :class:`ShutdownExit` ``"exception #GP
  at rip=0x..."`` - what KVM reports for the common test guest without an IDT (triple fault).
* Invalid or unimplemented instructions give :class:`EmulationFailureExit` (suberror 1, KVM's
  ``KVM_INTERNAL_ERROR_EMULATION``) with the instruction bytes; so does an instruction fetch
  from a page that is not RAM.
* VMX's "unusable" segment bit has no QEMU equivalent; an unusable segment is loaded
  not-present, and read back as the exact access rights given for as long as the guest does not
  reload that segment.
* Writes to a read-only slot are reported as :class:`MmioExit` (like KVM's read-only memslots)
  but unicorn also stores them into the backing memory.
* Abandoning an outstanding exit (``set_state`` or ``close`` while an I/O exit waits for its
  ``run()``, or an I/O handler returning None) lets the engine finish its current translated
  block (straight-line code up to the next branch) with further I/O suppressed (reads all-ones).
  With an I/O handler that tail runs after the handler returned None, i.e. after the runtime
  already counts the vCPU as parked (its state is reloaded before it runs again).
* A kick that arrives while an I/O handler runs takes effect at the end of the current
  translated block, so the instructions up to there (their I/O included) still run first.
* A HLT that coincides with a kick is reported as the kick; the guest then continues after the
  HLT, as after a wake-up.
"""

from __future__ import annotations

import ctypes
import importlib
import queue
import struct
import threading
from typing import Any, Final

from acrn.arch import (
    AR_L,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    RFLAGS_IF,
    CpuState,
    DescriptorTable,
    FpuState,
    Segment,
)
from acrn.emu.accel import soft_layout as lay
from acrn.emu.accel.base import (
    EmulationFailureExit,
    EntryFailureExit,
    HaltExit,
    IoExitHandler,
    KickExit,
    MmioExit,
    PioExit,
    ShutdownExit,
    VmExit,
)

PAGE: Final = 0x1000
#: Guest-physical addresses below this that are not RAM are MMIO; above it nothing is mapped.
PHYS_TOP: Final = 1 << 36
#: MMIO gaps are mapped in pieces that never cross a multiple of this (see _sync_memory).
GAP_CHUNK: Final = 1 << 32
MSR_EFER: Final = 0xC000_0080
#: KVM's KVM_INTERNAL_ERROR_EMULATION, used for instructions the engine cannot execute.
SUBERROR_EMULATION: Final = 1
#: VMX exit reason 33 "VM-entry failure due to invalid guest state" with the failure bit set.
ENTRY_FAILURE_INVALID_STATE: Final = 0x8000_0021

#: Opcodes that raise #UD by definition (UD2, UD1, UD0).
UD_OPCODES: Final = (b"\x0f\x0b", b"\x0f\xb9", b"\x0f\xff")

EXCEPTION_NAMES: Final = {
    0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
    10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC",
    19: "#XM", 20: "#VE", 21: "#CP",
}  # fmt: skip

_GPR_REGS: Final = (
    ("rax", "UC_X86_REG_RAX"), ("rcx", "UC_X86_REG_RCX"), ("rdx", "UC_X86_REG_RDX"),
    ("rbx", "UC_X86_REG_RBX"), ("rsp", "UC_X86_REG_RSP"), ("rbp", "UC_X86_REG_RBP"),
    ("rsi", "UC_X86_REG_RSI"), ("rdi", "UC_X86_REG_RDI"), ("r8", "UC_X86_REG_R8"),
    ("r9", "UC_X86_REG_R9"), ("r10", "UC_X86_REG_R10"), ("r11", "UC_X86_REG_R11"),
    ("r12", "UC_X86_REG_R12"), ("r13", "UC_X86_REG_R13"), ("r14", "UC_X86_REG_R14"),
    ("r15", "UC_X86_REG_R15"),
)  # fmt: skip

# Engine-thread commands.
_RESUME: Final = "resume"
_QUIT: Final = "quit"

_layout_problem: str | None = None


def _release_freed_heap() -> None:
    """Give the C heap's free memory back to the system (glibc ``malloc_trim``; elsewhere a no-op).

    A unicorn engine frees about 1 MiB of malloc'd state when it closes, which glibc keeps for
    reuse: without this a process that ran 100 soft VMs stays ~100 MiB larger after destroying
    them (measured), which looks like a leak to anyone watching RSS.  The call takes ~0.1 ms.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return
    trim(0)


def _unicorn() -> Any:
    """The unicorn module, imported on first use (pyacrn must import without it); typed Any."""
    return importlib.import_module("unicorn")


def _x86() -> Any:
    return importlib.import_module("unicorn.x86_const")


def _vmem_read() -> Any:
    """libunicorn's ``uc_vmem_read`` (2.1.x exports it; the Python binding does not wrap it)."""
    try:
        lib = importlib.import_module("unicorn.unicorn_py3.unicorn").uclib
        fn = lib.uc_vmem_read
    except (ImportError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    return fn


def _check_layout() -> str:
    """Verify (once per process) that unicorn's CPU context has the layout soft_layout expects."""
    global _layout_problem
    if _layout_problem is None:
        unicorn = _unicorn()
        _layout_problem = lay.verify(unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64))
    return _layout_problem


def exception_name(vector: int) -> str:
    return EXCEPTION_NAMES.get(vector, f"vector {vector}")


def _gaps(ram: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, size) pieces of [0, PHYS_TOP) not covered by ``ram``, cut at GAP_CHUNK multiples."""
    pieces: list[tuple[int, int]] = []
    cursor = 0
    for gpa, size in [*ram, (PHYS_TOP, 0)]:
        while cursor < gpa:
            end = min(gpa, (cursor // GAP_CHUNK + 1) * GAP_CHUNK)
            pieces.append((cursor, end - cursor))
            cursor = end
        cursor = max(cursor, gpa + size)
    return pieces


def validate_state(st: CpuState) -> str:
    """Why VM entry would refuse ``st`` (VMX guest-state checks that matter here), or ""."""
    if st.cr0 & CR0_PG and not st.cr0 & CR0_PE:
        return "CR0.PG set without CR0.PE"
    long_mode = bool(st.efer & EFER_LME and st.cr0 & CR0_PG)
    if bool(st.efer & EFER_LMA) != long_mode:
        return "EFER.LMA must equal EFER.LME && CR0.PG"
    if long_mode and not st.cr4 & CR4_PAE:
        return "long mode (EFER.LME and CR0.PG) needs CR4.PAE"
    if st.efer & EFER_LMA and st.cs.ar & AR_L and st.cs.ar & (1 << 14):
        return "CS.L and CS.D/B both set in IA-32e mode"
    return ""


class SoftVcpu:
    """One vCPU: a unicorn engine, run by an engine thread or by ``run()``'s caller (module doc)."""

    #: I/O can be handled inside ``run()`` (base.SyncIoVcpu).
    sync_io = True

    def __init__(self, vm: SoftVm, vcpu_id: int) -> None:
        unicorn = _unicorn()
        x = _x86()
        self.vcpu_id = vcpu_id
        self._vm = vm
        self._x = x
        self._unicorn: Any = unicorn
        self._uc: Any = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        self._uc.ctl_set_tlb_mode(unicorn.UC_TLB_CPU)
        # No `until` address: emulation ends only through our stops, HLT or errors.
        self._uc.ctl_exits_enabled(True)
        self._uc.ctl_set_exits([])
        self._ctx: Any = self._uc.context_save()
        self._env_size: int = self._ctx.size - lay.CONTEXT_DATA
        self._gpr_ids = [getattr(x, reg) for _, reg in _GPR_REGS]
        self._mmio: list[tuple[int, int]] = []
        self._mmio_hooks: dict[tuple[int, int], int] = {}
        self._ro_hooks: list[int] = []
        self._mmio_value = 0
        self._mmio_addr = 0
        self._ro_undo: list[tuple[int, bytes]] = []
        self._ram: list[tuple[int, int]] = []
        self._hooks: list[int] = []
        self._hooks.append(
            self._uc.hook_add(unicorn.UC_HOOK_INSN, self._on_out, None, 1, 0, x.UC_X86_INS_OUT)
        )
        self._hooks.append(self._uc.hook_add(unicorn.UC_HOOK_INSN, self._on_in, None, 1, 0, x.UC_X86_INS_IN))
        self._hooks.append(self._uc.hook_add(unicorn.UC_HOOK_INTR, self._on_intr))
        self._hooks.append(self._uc.hook_add(unicorn.UC_HOOK_MEM_WRITE_PROT, self._on_write_prot))
        # Shadow of the exact access rights set per segment: (selector, base, limit, flags) -> ar.
        self._shadow: dict[str, tuple[tuple[int, int, int, int], int]] = {}
        self._entry_error = ""
        # Engine-thread rendezvous.
        self._thread: threading.Thread | None = None
        self._to_engine: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._to_caller: queue.SimpleQueue[VmExit] = queue.SimpleQueue()
        self._cv = threading.Condition()
        self._in_guest = False  # the engine thread is executing guest code (not parked)
        self._kick_pending = False
        self._stop_issued = False  # an emu_stop was issued during the current emu_start
        self._waiting_exit = False  # an I/O exit was returned and the engine waits in its callback
        self._read_value = 0
        self._abandon = False
        self._fault: VmExit | None = None
        self._closed = False
        self._io_handler: IoExitHandler | None = None
        self._inline = False  # run() executes the engine on the caller's thread right now
        self._sync_memory()

    # --- memory -----------------------------------------------------------------------------

    def _sync_memory(self) -> None:
        """Make the engine's physical map equal the VM's slots, with MMIO in every gap.

        Unmapping costs unicorn time per page (measured ~70 ms per 4 GiB), so gaps are cut at
        4 GiB boundaries and only the pieces that changed are unmapped and mapped again.
        """
        unicorn = self._unicorn
        slots = self._vm.slots()
        wanted_ram = {(gpa, size) for gpa, size, _, _ in slots}
        wanted_mmio = set(_gaps(sorted(wanted_ram)))
        for start, size in set(self._mmio) - wanted_mmio:
            self._uc.mem_unmap(start, size)
            self._uc.hook_del(self._mmio_hooks.pop((start, size)))
        for gpa, size in set(self._ram) - wanted_ram:
            self._uc.mem_unmap(gpa, size)
        for h in self._ro_hooks:
            self._uc.hook_del(h)
        self._ro_hooks = []
        for gpa, size, host, writable in slots:
            if (gpa, size) not in self._ram:
                perms = unicorn.UC_PROT_ALL if writable else unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC
                self._uc.mem_map_ptr(gpa, size, perms, host)
            if not writable:
                hook = self._uc.hook_add(
                    unicorn.UC_HOOK_MEM_READ, self._on_read_only_read, None, gpa, gpa + size - 1
                )
                self._ro_hooks.append(hook)
        self._ram = sorted(wanted_ram)
        for start, size in sorted(wanted_mmio - set(self._mmio)):
            self._uc.mmio_map(start, size, self._on_mmio_read, start, self._on_mmio_write, None)
            # The exit is taken in a memory hook bounded to the gap, not in the MMIO callback:
            # unicorn syncs RIP and the lazy flags before memory hooks only.
            self._mmio_hooks[(start, size)] = self._uc.hook_add(
                unicorn.UC_HOOK_MEM_READ | unicorn.UC_HOOK_MEM_WRITE,
                self._on_mmio_access,
                None,
                start,
                start + size - 1,
            )
        self._mmio = sorted(wanted_mmio)

    # --- state --------------------------------------------------------------------------------

    def set_state(self, state: CpuState) -> None:
        """Load the full architectural state (see the module doc for how hidden parts land)."""
        self._check_open()
        self._park_engine()
        x = self._x
        uc = self._uc
        st = state
        self._entry_error = validate_state(st)
        # Translated blocks are cached by address and unicorn does not see host writes to guest
        # RAM; a new state usually comes with new code (image reload after RESET), so drop them.
        self._uc.ctl_flush_tb()
        # Control registers in an order that lets QEMU derive EFER.LMA from the CR0.PG
        # transition (cpu_x86_update_cr0): paging off, CR4, EFER (LME), then the final CR0.
        uc.reg_write(x.UC_X86_REG_CR0, st.cr0 & ~CR0_PG & 0xFFFF_FFFF)
        uc.reg_write(x.UC_X86_REG_CR4, st.cr4)
        uc.msr_write(MSR_EFER, st.efer & ~EFER_LMA)
        uc.reg_write(x.UC_X86_REG_CR0, st.cr0)
        uc.reg_write(x.UC_X86_REG_CR3, st.cr3)
        uc.reg_write(x.UC_X86_REG_CR2, st.cr2)
        uc.reg_write(x.UC_X86_REG_GDTR, (0, st.gdtr.base, st.gdtr.limit, 0))
        uc.reg_write(x.UC_X86_REG_IDTR, (0, st.idtr.base, st.idtr.limit, 0))
        for name, reg in (("ldtr", x.UC_X86_REG_LDTR), ("tr", x.UC_X86_REG_TR)):
            seg = st.segment(name)
            flags = lay.ar_to_flags(seg.ar)
            uc.reg_write(reg, (seg.selector & 0xFFFF, seg.base, seg.limit & 0xFFFF_FFFF, flags))
            self._shadow[name] = ((seg.selector & 0xFFFF, seg.base, seg.limit & 0xFFFF_FFFF, flags), seg.ar)
        uc.reg_write(x.UC_X86_REG_RFLAGS, st.rflags)
        for (name, _), reg in zip(_GPR_REGS, self._gpr_ids, strict=True):
            uc.reg_write(reg, int(getattr(st, name)) & 0xFFFF_FFFF_FFFF_FFFF)
        uc.reg_write(x.UC_X86_REG_RIP, st.rip)
        # Segment caches and the hflags derived from them, through the CPU context.
        uc.context_update(self._ctx)
        env = lay.read_env(self._ctx, lay.OFF_EFER + 8)
        # EFER exactly as given: QEMU's WRMSR keeps LMA (a status bit) from before.
        struct.pack_into("<Q", env, lay.OFF_EFER, st.efer & 0xFFFF_FFFF_FFFF_FFFF)
        caches: dict[str, tuple[int, int, int, int]] = {}
        for name, index in lay.SEG_INDEX.items():
            seg = st.segment(name)
            flags = lay.ar_to_flags(seg.ar)
            cache = (seg.selector & 0xFFFF, seg.base & 0xFFFF_FFFF_FFFF_FFFF, seg.limit & 0xFFFF_FFFF, flags)
            caches[name] = cache
            self._shadow[name] = (cache, seg.ar)
            struct.pack_into("<I4xQII", env, lay.OFF_SEGS + index * lay.SEG_SIZE, *cache)
        (hflags,) = struct.unpack_from("<I", env, lay.OFF_HFLAGS)
        hflags = (hflags | lay.HF_LMA) if st.efer & EFER_LMA else (hflags & ~lay.HF_LMA)
        hflags = lay.derive_hflags(hflags, caches, bool(st.cr0 & CR0_PE), bool(st.rflags & lay.HF_VM))
        struct.pack_into("<I", env, lay.OFF_HFLAGS, hflags)
        lay.write_env(self._ctx, lay.OFF_HFLAGS, bytes(env[lay.OFF_HFLAGS :]))
        uc.context_restore(self._ctx)
        uc.ctl(self._unicorn.UC_CTL_TLB_FLUSH, self._unicorn.UC_CTL_IO_WRITE)

    def get_state(self) -> CpuState:
        """Read the full architectural state back (exact ARs while the guest kept its segments)."""
        self._check_open()
        x = self._x
        uc = self._uc
        st = CpuState()
        uc.context_update(self._ctx)
        env = lay.read_env(self._ctx, lay.OFF_SEGS + 6 * lay.SEG_SIZE)
        for name, index in lay.SEG_INDEX.items():
            setattr(st, name, self._segment_from_cache(name, lay.unpack_segment(env, index)))
        for name, reg in (("ldtr", x.UC_X86_REG_LDTR), ("tr", x.UC_X86_REG_TR)):
            sel, base, limit, flags = uc.reg_read(reg)
            setattr(st, name, self._segment_from_cache(name, (sel, base, limit, flags)))
        _, base, limit, _ = uc.reg_read(x.UC_X86_REG_GDTR)
        st.gdtr = DescriptorTable(base, limit)
        _, base, limit, _ = uc.reg_read(x.UC_X86_REG_IDTR)
        st.idtr = DescriptorTable(base, limit)
        st.cr0 = uc.reg_read(x.UC_X86_REG_CR0)
        st.cr2 = uc.reg_read(x.UC_X86_REG_CR2)
        st.cr3 = uc.reg_read(x.UC_X86_REG_CR3)
        st.cr4 = uc.reg_read(x.UC_X86_REG_CR4)
        st.efer = uc.msr_read(MSR_EFER)
        st.rflags = uc.reg_read(x.UC_X86_REG_RFLAGS)
        st.rip = uc.reg_read(x.UC_X86_REG_RIP)
        for (name, _), reg in zip(_GPR_REGS, self._gpr_ids, strict=True):
            setattr(st, name, uc.reg_read(reg))
        return st

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """The MSRs the engine knows (unicorn's rdmsr: SYSENTER_*, PAT, STAR/LSTAR/CSTAR/FMASK, ...)."""
        self._check_open()
        return {i: self._uc.msr_read(i) for i in indices}

    def set_msrs(self, msrs: dict[int, int]) -> None:
        """Write MSRs into the engine (EFER goes with :meth:`set_state`)."""
        self._check_open()
        for index, value in msrs.items():
            self._uc.msr_write(index, value)

    def get_fpu_state(self) -> FpuState:
        """The x87 and SSE registers (unicorn keeps x87 registers by physical index, with tags)."""
        self._check_open()
        x = self._x
        uc = self._uc
        fsw = uc.reg_read(x.UC_X86_REG_FPSW) & 0xFFFF
        top = (fsw >> 11) & 7
        tags = uc.reg_read(x.UC_X86_REG_FPTAG)
        ftw = sum(1 << p for p in range(8) if (tags >> (2 * p)) & 3 != 3)
        st = []
        for i in range(8):
            mantissa, exponent = uc.reg_read(x.UC_X86_REG_FP0 + (top + i) % 8)
            st.append(mantissa.to_bytes(8, "little") + (exponent & 0xFFFF).to_bytes(2, "little"))
        xmm = [
            (uc.reg_read(getattr(x, f"UC_X86_REG_XMM{i}")) & ((1 << 128) - 1)).to_bytes(16, "little")
            for i in range(16)
        ]
        return FpuState(
            fcw=uc.reg_read(x.UC_X86_REG_FPCW) & 0xFFFF,
            fsw=fsw,
            ftw=ftw,
            fop=uc.reg_read(x.UC_X86_REG_FOP) & 0x7FF,
            fip=uc.reg_read(x.UC_X86_REG_FIP),
            fdp=uc.reg_read(x.UC_X86_REG_FDP),
            st=st,
            xmm=xmm,
            mxcsr=uc.reg_read(x.UC_X86_REG_MXCSR) & 0xFFFFFFFF,
        )

    def set_fpu_state(self, fpu: FpuState) -> None:
        """Load the x87 and SSE registers (after :meth:`set_state`, which leaves them alone)."""
        self._check_open()
        x = self._x
        uc = self._uc
        top = fpu.top
        uc.reg_write(x.UC_X86_REG_FPCW, fpu.fcw)
        uc.reg_write(x.UC_X86_REG_FPSW, fpu.fsw)
        for i, raw in enumerate(fpu.st):
            value = (int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:10], "little"))
            uc.reg_write(x.UC_X86_REG_FP0 + (top + i) % 8, value)
        # Full tag word from the abridged one: 00 (valid) for a register in use, 11 (empty) else.
        uc.reg_write(x.UC_X86_REG_FPTAG, sum(3 << (2 * p) for p in range(8) if not fpu.ftw >> p & 1))
        uc.reg_write(x.UC_X86_REG_FOP, fpu.fop)
        uc.reg_write(x.UC_X86_REG_FIP, fpu.fip)
        uc.reg_write(x.UC_X86_REG_FDP, fpu.fdp)
        for i, raw in enumerate(fpu.xmm):
            uc.reg_write(getattr(x, f"UC_X86_REG_XMM{i}"), int.from_bytes(raw, "little"))
        uc.reg_write(x.UC_X86_REG_MXCSR, fpu.mxcsr)

    def _segment_from_cache(self, name: str, cache: tuple[int, int, int, int]) -> Segment:
        sel, base, limit, flags = cache
        shadow = self._shadow.get(name)
        ar = shadow[1] if shadow is not None and shadow[0] == cache else lay.flags_to_ar(flags)
        return Segment(sel & 0xFFFF, base, limit & 0xFFFF_FFFF, ar)

    # --- running --------------------------------------------------------------------------------

    def run(self) -> VmExit:
        """Run until the next exit (I/O, HLT, fault, kick) and return it."""
        self._check_open()
        with self._cv:
            if self._kick_pending:
                self._kick_pending = False
                return KickExit()
        if self._entry_error and not self._waiting_exit:
            return EntryFailureExit(ENTRY_FAILURE_INVALID_STATE, self._entry_error)
        if self._io_handler is not None:
            return self._run_inline()
        if self._thread is None:
            self._thread = threading.Thread(target=self._engine, name=f"soft-vcpu{self.vcpu_id}", daemon=True)
            self._thread.start()
        self._waiting_exit = False
        self._to_engine.put(_RESUME)
        exit_ = self._to_caller.get()
        self._waiting_exit = isinstance(exit_, PioExit | MmioExit)
        return exit_

    def _run_inline(self) -> VmExit:
        """``run`` with an I/O handler: the engine runs here, I/O goes to the handler (no handoff)."""
        self._inline = True
        self._abandon = False
        try:
            return self._emulate()
        finally:
            self._inline = False
            self._abandon = False
            self._undo_read_only()
            with self._cv:  # also after an exception raised by the handler through emu_start
                self._in_guest = False
                self._cv.notify_all()

    def set_io_handler(self, handler: IoExitHandler | None) -> None:
        """Handle I/O with ``handler`` inside ``run`` (base.SyncIoVcpu); None: exits from ``run``.

        Call it between runs only.  An I/O exit still waiting for its ``run()`` is abandoned.
        """
        self._check_open()
        self._park_engine(quit_thread=True)
        self._io_handler = handler

    def complete_read(self, value: int) -> None:
        """Supply the value of the last PIO/MMIO read; the next ``run`` completes the access."""
        self._read_value = int(value)

    def kick(self) -> None:
        """Thread-safe: make the current or the next ``run`` return :class:`KickExit`."""
        with self._cv:
            self._kick_pending = True
            # A stop that lands just before emu_start resets its stop request is lost: repeat
            # it until the engine leaves guest code (it notifies under this condition).
            while self._in_guest and self._kick_pending and not self._closed:
                self._stop_issued = True
                self._uc.emu_stop()
                self._cv.wait(0.002)

    def close(self) -> None:
        """Stop the engine thread, release the engine and its mappings."""
        if self._closed:
            return
        self._park_engine(quit_thread=True)
        self._closed = True
        for h in [*self._hooks, *self._mmio_hooks.values(), *self._ro_hooks]:
            self._uc.hook_del(h)
        self._hooks = []
        self._mmio_hooks = {}
        self._ro_hooks = []
        finalizer = getattr(self._uc, "_Uc__finalizer", None)
        self._ctx = None
        self._uc = None
        if finalizer is not None:
            finalizer()  # uc_close now, rather than whenever the cyclic GC runs
            _release_freed_heap()
        self._vm._forget(self)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"soft vCPU {self.vcpu_id} is closed")

    def _park_engine(self, quit_thread: bool = False) -> None:
        """Bring the engine thread out of guest code: abandon an outstanding I/O exit."""
        if self._thread is None:
            return
        if self._waiting_exit:
            self._abandon = True
            self._waiting_exit = False
            self._to_engine.put(_RESUME)
            self._to_caller.get()  # the engine reports once it has left emu_start
            self._abandon = False
        if quit_thread:
            self._to_engine.put(_QUIT)
            self._thread.join()
            self._thread = None

    # --- engine thread ---------------------------------------------------------------------------

    def _engine(self) -> None:
        while self._to_engine.get() != _QUIT:
            self._to_caller.put(self._emulate())

    def _emulate(self) -> VmExit:
        """One ``run`` on the engine side: emu_start until something worth reporting happens."""
        unicorn = self._unicorn
        x = self._x
        while True:
            with self._cv:
                if self._kick_pending and not self._abandon:
                    self._kick_pending = False
                    return KickExit()
                self._in_guest = True
                self._stop_issued = False
                self._cv.notify_all()
            self._fault = None
            error: Any = None
            try:
                self._uc.emu_start(self._uc.reg_read(x.UC_X86_REG_RIP), 0)
            except unicorn.UcError as e:
                error = e
            self._undo_read_only()
            with self._cv:
                self._in_guest = False
                stop_issued = self._stop_issued
                kicked = self._kick_pending
                self._cv.notify_all()
            if self._abandon:
                return KickExit()
            if error is not None:
                return self._error_exit(error)
            if self._fault is not None:
                return self._fault
            if kicked:
                with self._cv:
                    self._kick_pending = False
                return KickExit()
            if stop_issued:
                continue  # a stale stop from a kick already consumed by run(): carry on
            return HaltExit(bool(self._uc.reg_read(x.UC_X86_REG_RFLAGS) & RFLAGS_IF))

    def _error_exit(self, error: Any) -> VmExit:
        unicorn = self._unicorn
        rip = self._uc.reg_read(self._x.UC_X86_REG_RIP)
        code = error.errno
        if code in (unicorn.UC_ERR_FETCH_UNMAPPED, unicorn.UC_ERR_FETCH_PROT):
            return EmulationFailureExit(SUBERROR_EMULATION, f"instruction fetch from non-RAM at rip={rip:#x}")
        insn = self._insn_bytes(rip)
        if code == unicorn.UC_ERR_INSN_INVALID:
            if insn[:2] in UD_OPCODES:
                # An architectural #UD (UD2/UD1/UD0): no IDT delivery here, so a shutdown,
                # as KVM reports for a guest without an IDT (see the module doc).
                return ShutdownExit(f"exception #UD at rip={rip:#x}")
            return EmulationFailureExit(
                SUBERROR_EMULATION, f"invalid or unsupported instruction at rip={rip:#x}", insn
            )
        return EmulationFailureExit(SUBERROR_EMULATION, f"{error} at rip={rip:#x}", insn)

    def _insn_bytes(self, rip: int) -> bytes:
        """Up to 15 bytes at CS:RIP, through the guest's page tables (best effort, b"" if none)."""
        self._uc.context_update(self._ctx)
        cs_base = lay.unpack_segment(lay.read_env(self._ctx, lay.OFF_SEGS + 2 * lay.SEG_SIZE), 1)[1]
        linear = (cs_base + rip) & 0xFFFF_FFFF_FFFF_FFFF
        vmem_read = _vmem_read()
        if vmem_read is None:
            return b""
        for size in (15, PAGE - (linear % PAGE)):
            buf = ctypes.create_string_buffer(size)
            if vmem_read(self._uc._uch, linear, self._unicorn.UC_PROT_EXEC, buf, size) == 0:
                return buf.raw
        return b""

    def _exchange(self, exit_: VmExit) -> bool:
        """Hand an I/O exit to ``run()`` and wait for the next ``run()``; False if abandoned."""
        if self._abandon:
            return False
        self._undo_read_only()
        with self._cv:
            self._in_guest = False
            self._cv.notify_all()
        self._to_caller.put(exit_)
        cmd = self._to_engine.get()
        if cmd == _QUIT:  # close() without run(): leave quietly
            self._abandon = True
        if self._abandon:
            self._uc.emu_stop()
            return False
        with self._cv:
            self._in_guest = True
            self._cv.notify_all()
        return True

    def _io(self, is_mmio: bool, address: int, size: int, is_write: bool, value: int) -> int | None:
        """Deliver one access (handler or handoff): the read value (anything for a write), or None
        when it was abandoned."""
        handler = self._io_handler
        if not self._inline or handler is None:
            exit_ = (
                MmioExit(address, size, is_write, value)
                if is_mmio
                else PioExit(address, size, is_write, value)
            )
            return self._read_value if self._exchange(exit_) else None
        if self._abandon:
            return None  # the rest of an abandoned block: no more I/O
        self._undo_read_only()
        # Out of guest code while the handler runs (it may block): a kick then only marks itself
        # pending, and is acted on below, inside emu_start, where a stop cannot be lost.
        with self._cv:
            self._in_guest = False
            self._cv.notify_all()
        read: int | None = None
        try:
            read = handler(is_mmio, address, size, is_write, value)
        finally:
            with self._cv:
                self._in_guest = True
                if self._kick_pending or read is None:
                    self._stop_issued = True
                    self._uc.emu_stop()
        if read is None:
            self._abandon = True
        return read

    # unicorn callbacks (engine thread, or run()'s caller with an I/O handler)

    def _on_out(self, uc: Any, port: int, size: int, value: int, _: Any) -> None:
        self._io(False, port, size, True, value & ((1 << (8 * size)) - 1))

    def _on_in(self, uc: Any, port: int, size: int, _: Any) -> int:
        value = self._io(False, port, size, False, 0)
        mask = (1 << (8 * size)) - 1
        return mask if value is None else value & mask

    def _on_mmio_access(self, uc: Any, access: int, address: int, size: int, value: int, _: Any) -> None:
        mask = (1 << (8 * size)) - 1
        self._mmio_addr = address
        if access == self._unicorn.UC_MEM_WRITE:
            self._io(True, address, size, True, value & mask)
        else:
            read = self._io(True, address, size, False, 0)
            self._mmio_value = mask if read is None else read & mask

    def _on_mmio_read(self, uc: Any, offset: int, size: int, base: int) -> int:
        # The value was obtained by _on_mmio_access just before; QEMU may split the access
        # into narrower region reads (an 8-byte read arrives as two 4-byte ones).
        shift = 8 * max(0, base + offset - self._mmio_addr)
        return (self._mmio_value >> shift) & ((1 << (8 * size)) - 1)

    def _on_mmio_write(self, uc: Any, offset: int, size: int, value: int, _: Any) -> None:
        pass  # reported by _on_mmio_access just before

    def _on_write_prot(self, uc: Any, access: int, address: int, size: int, value: int, _: Any) -> bool:
        # KVM turns writes to a read-only slot into MMIO exits and drops them.  Unicorn stores
        # a write once a hook has accepted it (and stops imprecisely if none does), so keep the
        # old bytes and put them back before the next read of the slot or the next exit.
        self._io(True, address, size, True, value & ((1 << (8 * size)) - 1))
        host = self._vm.host_address(address, size)
        if host is not None:  # saved after the exchange: it restores pending undos itself
            self._ro_undo.append((host, ctypes.string_at(host, size)))
        return True

    def _on_read_only_read(self, uc: Any, access: int, address: int, size: int, value: int, _: Any) -> None:
        if self._ro_undo:
            self._undo_read_only()

    def _undo_read_only(self) -> None:
        while self._ro_undo:
            host, old = self._ro_undo.pop()
            ctypes.memmove(host, old, len(old))

    def _on_intr(self, uc: Any, vector: int, _: Any) -> None:
        # Called outside the translated block, so the stop is precise; RIP is at the faulting
        # instruction (after it for INT n / INT3 / INTO).
        rip = uc.reg_read(self._x.UC_X86_REG_RIP)
        self._fault = ShutdownExit(f"exception {exception_name(vector)} at rip={rip:#x}")
        uc.emu_stop()


class SoftVm:
    """A VM of soft vCPUs sharing guest-physical slots backed by host memory."""

    name = "soft"

    def __init__(self) -> None:
        self._slots: dict[int, tuple[int, int, bool]] = {}
        self._vcpus: dict[int, SoftVcpu] = {}
        self._closed = False

    def slots(self) -> list[tuple[int, int, int, bool]]:
        """(gpa, size, host_addr, writable) of every RAM slot, by address."""
        return [(gpa, size, host, w) for gpa, (size, host, w) in sorted(self._slots.items())]

    def host_address(self, gpa: int, size: int) -> int | None:
        """The host address backing guest-physical [gpa, gpa+size), if one slot holds it all."""
        for start, (slot_size, host, _) in self._slots.items():
            if start <= gpa and gpa + size <= start + slot_size:
                return host + (gpa - start)
        return None

    def map_memory(self, gpa: int, size: int, host_addr: int, *, writable: bool = True) -> None:
        """Back guest-physical [gpa, gpa+size) with host memory at ``host_addr`` (no copy)."""
        self._check_open()
        if size <= 0 or gpa % PAGE or size % PAGE or host_addr % PAGE:
            raise ValueError(f"soft: gpa, size and host address must be 4 KiB aligned ({gpa:#x}+{size:#x})")
        if gpa + size > PHYS_TOP:
            raise ValueError(f"soft: gpa range {gpa:#x}+{size:#x} beyond the 36-bit physical space")
        for other, (osize, _, _) in self._slots.items():
            if gpa < other + osize and other < gpa + size:
                raise ValueError(f"soft: {gpa:#x}+{size:#x} overlaps the slot at {other:#x}")
        self._slots[gpa] = (size, host_addr, writable)
        for vcpu in self._vcpus.values():
            vcpu._sync_memory()

    def unmap_memory(self, gpa: int, size: int) -> None:
        """Remove a mapping made by :meth:`map_memory` with the same gpa and size."""
        self._check_open()
        if self._slots.get(gpa, (None,))[0] != size:
            raise ValueError(f"soft: no slot at {gpa:#x} of size {size:#x}")
        del self._slots[gpa]
        for vcpu in self._vcpus.values():
            vcpu._sync_memory()

    def create_vcpu(self, vcpu_id: int, apic_id: int | None = None) -> SoftVcpu:
        """Create a vCPU; its state is undefined until :meth:`SoftVcpu.set_state` (no local APIC:
        ``apic_id`` is not used)."""
        self._check_open()
        if vcpu_id in self._vcpus:
            raise ValueError(f"soft: vCPU {vcpu_id} exists")
        vcpu = SoftVcpu(self, vcpu_id)
        self._vcpus[vcpu_id] = vcpu
        return vcpu

    def close(self) -> None:
        """Release every vCPU (engine thread and engine) and forget the slots."""
        for vcpu in list(self._vcpus.values()):
            vcpu.close()
        self._slots.clear()
        self._closed = True

    def _forget(self, vcpu: SoftVcpu) -> None:
        self._vcpus.pop(vcpu.vcpu_id, None)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("soft VM is closed")


class SoftAccelerator:
    """The unicorn-backed accelerator (``name = "soft"``)."""

    name = "soft"

    @staticmethod
    def available() -> tuple[bool, str]:
        """unicorn importable, version 2.1.x, and its CPU context layout as expected."""
        try:
            unicorn = _unicorn()
        except ImportError as e:
            return False, f"unicorn not importable: {e}"
        version = getattr(unicorn, "__version__", "?")
        if not str(version).startswith("2.1."):
            return False, f"unicorn {version} found, 2.1.x needed"
        problem = _check_layout()
        if problem:
            return False, problem
        return True, f"unicorn {version}"

    def create_vm(self) -> SoftVm:
        ok, why = self.available()
        if not ok:
            raise RuntimeError(f"soft accelerator unavailable: {why}")
        return SoftVm()


ACCELERATOR = SoftAccelerator

__all__ = ["ACCELERATOR", "PHYS_TOP", "SoftAccelerator", "SoftVcpu", "SoftVm", "validate_state"]
