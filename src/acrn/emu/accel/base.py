"""The accelerator interface: what an execution engine offers the emulated hypervisor.

Accelerators know nothing of ACRN.  They take an architectural :class:`~acrn.arch.CpuState` and
guest-memory slots backed by host memory (a host virtual address in this process), run a vCPU and
report why it stopped as a :class:`VmExit`.  Both the KVM and the soft (unicorn) accelerator
implement it and pass the same conformance suite.

Threading contract: one thread calls :meth:`AccelVcpu.run` for a given vCPU; any thread may call
:meth:`AccelVcpu.kick`, which makes the current or next ``run`` return :class:`KickExit` promptly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from acrn.arch import CpuState


@dataclass(frozen=True)
class VmExit:
    """Base of all exit reasons."""


@dataclass(frozen=True)
class PioExit(VmExit):
    """One port-I/O access (string I/O is split into one exit per element).

    For a read, the caller must call :meth:`AccelVcpu.complete_read` with the value before the
    next :meth:`AccelVcpu.run`; for a write, ``value`` holds the data (``size`` bytes).
    """

    port: int
    size: int
    is_write: bool
    value: int = 0


@dataclass(frozen=True)
class MmioExit(VmExit):
    """One access to guest-physical memory that is not RAM (same read protocol as PioExit)."""

    address: int
    size: int
    is_write: bool
    value: int = 0


@dataclass(frozen=True)
class HaltExit(VmExit):
    """The vCPU executed HLT. ``interrupts_enabled`` is RFLAGS.IF at that point."""

    interrupts_enabled: bool


@dataclass(frozen=True)
class ShutdownExit(VmExit):
    """Triple fault (or an equivalent unrecoverable fault): the processor shut down."""

    detail: str = ""


@dataclass(frozen=True)
class EntryFailureExit(VmExit):
    """VM entry refused the state (KVM_EXIT_FAIL_ENTRY or an invalid state for the soft CPU)."""

    reason: int
    detail: str = ""


@dataclass(frozen=True)
class EmulationFailureExit(VmExit):
    """The engine could not execute an instruction (KVM_EXIT_INTERNAL_ERROR, unicorn errors)."""

    suberror: int
    detail: str = ""
    insn_bytes: bytes = b""


@dataclass(frozen=True)
class KickExit(VmExit):
    """``kick()`` was called (or a signal interrupted the run); nothing happened in the guest."""


@dataclass(frozen=True)
class StartupExit(VmExit):
    """An application processor left wait-for-SIPI: the guest's INIT/SIPI started it.

    Only vCPUs put in wait-for-SIPI by :meth:`MultiprocessorVcpu.power_on` report it, once, when
    they start at CS.selector = ``vector`` << 8, CS.base = ``vector`` << 12, RIP = 0.
    """

    vector: int


@dataclass(frozen=True)
class UnknownExit(VmExit):
    """An exit the accelerator does not translate; ``code`` is the engine's own reason."""

    code: int
    detail: str = ""


class AccelVcpu(Protocol):
    """One vCPU of an accelerator VM."""

    vcpu_id: int

    def set_state(self, state: CpuState) -> None:
        """Load the full architectural state (segments with hidden parts, tables, CRs, GPRs)."""

    def get_state(self) -> CpuState:
        """Read the full architectural state back."""

    def run(self) -> VmExit:
        """Run until the next exit and return it."""

    def complete_read(self, value: int) -> None:
        """Supply the value of the last PIO/MMIO read exit."""

    def kick(self) -> None:
        """Thread-safe: make ``run`` return :class:`KickExit` promptly."""

    def close(self) -> None:
        """Release the vCPU's resources (fds, mappings)."""


class AccelVm(Protocol):
    """One VM of an accelerator: guest memory slots plus vCPUs."""

    name: str

    def map_memory(self, gpa: int, size: int, host_addr: int, *, writable: bool = True) -> None:
        """Back guest-physical [gpa, gpa+size) with host memory at ``host_addr`` (no copy)."""

    def unmap_memory(self, gpa: int, size: int) -> None:
        """Remove a mapping made by :meth:`map_memory` with the same gpa and size."""

    def create_vcpu(self, vcpu_id: int, apic_id: int | None = None) -> AccelVcpu:
        """Create a vCPU; its state is undefined until :meth:`AccelVcpu.set_state`.

        ``apic_id`` is its local APIC's ID (default ``vcpu_id``), for accelerators that have one.
        """

    def close(self) -> None:
        """Release every vCPU, mapping and fd of the VM."""


class InterruptController(Protocol):
    """Optional AccelVm capability: interrupt controllers (IOAPIC, 8259 pair, per-vCPU local APICs).

    An AccelVm has it when its ``interrupt_controller`` attribute is True; the routing from ACRN's
    GSIs to these lines is :mod:`acrn.emu.irq`'s business, not the accelerator's.
    """

    interrupt_controller: bool
    #: Input pins of the IOAPIC.
    ioapic_pins: int

    def set_ioapic_line(self, pin: int, level: bool) -> None:
        """Drive IOAPIC input ``pin`` to ``level`` (the RTE decides edge or level triggering)."""

    def set_pic_line(self, pin: int, level: bool) -> None:
        """Drive 8259 input ``pin`` (0-7 master, 8-15 slave) to ``level``."""

    def signal_msi(self, address: int, data: int) -> bool:
        """Deliver one MSI (address 0xFEExxxxx, data) to the local APICs; False if none accepted it."""

    def reset_interrupt_controllers(self) -> None:
        """Put the IOAPIC and PICs back to their power-on state with every input line low."""


class MultiprocessorVcpu(Protocol):
    """Optional AccelVcpu capability (``multiprocessor`` is True): local APIC and INIT/SIPI start-up."""

    multiprocessor: bool

    def power_on(self, *, wait_for_sipi: bool) -> None:
        """After ``set_state``: reset the local APIC and pending events to power-on values, then
        either run at the next ``run`` (BSP) or wait for the guest's INIT/SIPI (AP): ``run`` then
        returns :class:`StartupExit` when a SIPI arrives after an INIT, with every register of the
        loaded state kept except CS selector/base and RIP (ACRN's rule for a vCPU that never ran,
        ``hypervisor/arch/x86/guest/vlapic.c: vlapic_process_init_sipi``), or :class:`KickExit` when kicked
        meanwhile."""


#: The I/O handler every way of running hands accesses to: ``(is_mmio, address, size, is_write,
#: value) -> read value`` (anything for a write), or None when the vCPU was parked meanwhile and
#: the access is abandoned (:class:`IoLoopVcpu`, :class:`SyncIoVcpu`, :func:`run_with_io`).
IoExitHandler = Callable[[bool, int, int, bool, int], int | None]


class SyncIoVcpu(Protocol):
    """Optional AccelVcpu capability (``sync_io`` is True): I/O handled inside ``run``.

    An engine that meets guest I/O in the middle of an instruction (the soft CPU's hooks) would
    otherwise need a thread handoff per exit.  With a handler set, ``run`` never returns
    :class:`PioExit`/:class:`MmioExit`: it calls the handler on the thread that called ``run``,
    and a read completes with the value returned.  The handler may block (the faithful ioreq path
    waits for the device model there); ``kick`` meanwhile makes ``run`` return
    :class:`KickExit` right after the access.  A handler returning None abandons the access:
    ``run`` returns :class:`KickExit` without completing the instruction faithfully, so the
    caller reloads the state (``set_state``) before running again, as ACRN runs a paused vCPU
    only after RESET.  KVM exits to userspace at every access anyway and does not offer this.
    """

    sync_io: bool

    def set_io_handler(self, handler: IoExitHandler | None) -> None:
        """Handle I/O with ``handler`` from now on (None: return exits from ``run`` again).

        Only between runs: not while another thread is inside ``run``.
        """


class IoLoopVcpu(Protocol):
    """Optional AccelVcpu capability (``io_loop`` is True): a run loop that handles I/O in place.

    ``run_io(handler)`` behaves like repeated ``run()`` calls whose PIO/MMIO exits are passed to
    ``handler`` and completed with its value, without building exit objects or taking per-exit
    locks: the engine's own hot loop.  It returns the first exit of any other kind (as ``run``
    would return it), or None when ``handler`` returned None, leaving that access to the caller
    exactly as if ``run`` had returned it.  KVM offers it; the soft CPU has :class:`SyncIoVcpu`
    instead; :func:`run_with_io` gives every vCPU the same shape.
    """

    io_loop: bool

    def run_io(self, handler: IoExitHandler) -> VmExit | None:
        """Run, handling I/O exits with ``handler``, until another exit or a None."""


def run_with_io(vcpu: AccelVcpu, handler: IoExitHandler) -> VmExit | None:
    """:meth:`IoLoopVcpu.run_io` for a vCPU that only has ``run`` (the fallback's and hybrid's
    wrappers): the same contract, built on returned exits and :meth:`AccelVcpu.complete_read`."""
    ex = vcpu.run()
    while isinstance(ex, PioExit | MmioExit):
        if isinstance(ex, PioExit):
            value = handler(False, ex.port, ex.size, ex.is_write, ex.value)
        else:
            value = handler(True, ex.address, ex.size, ex.is_write, ex.value)
        if value is None:
            return None
        if not ex.is_write:
            vcpu.complete_read(value)
        ex = vcpu.run()
    return ex


def io_runner(vcpu: AccelVcpu, handler: IoExitHandler) -> Callable[[], VmExit | None]:
    """How to run ``vcpu`` with every I/O access going to ``handler``: a call that runs it until
    an exit other than I/O (returned) or an abandoned access (None).  The engine's own loop
    (:class:`IoLoopVcpu`), its in-instruction hook (:class:`SyncIoVcpu`, installed here, once), or
    :func:`run_with_io` over ``run``."""
    loop = io_loop_vcpu(vcpu)
    if loop is not None:
        return functools.partial(loop.run_io, handler)
    sync = sync_io_vcpu(vcpu)
    if sync is not None:
        sync.set_io_handler(handler)
        return vcpu.run
    return functools.partial(run_with_io, vcpu, handler)


def io_loop_vcpu(vcpu: AccelVcpu) -> IoLoopVcpu | None:
    """``vcpu`` as an :class:`IoLoopVcpu` if its class offers ``run_io``, else None.

    The class, not the instance: a wrapper that forwards unknown attributes to a KVM vCPU (the
    fallback's) must not have its own ``run`` bypassed by the wrapped vCPU's loop.
    """
    if getattr(type(vcpu), "io_loop", False):
        return vcpu  # type: ignore[return-value]
    return None


def sync_io_vcpu(vcpu: AccelVcpu) -> SyncIoVcpu | None:
    """``vcpu`` as a :class:`SyncIoVcpu` if it can handle I/O inside ``run``, else None."""
    if getattr(vcpu, "sync_io", False):
        return vcpu  # type: ignore[return-value]
    return None


def interrupt_controller(vm: AccelVm) -> InterruptController | None:
    """``vm`` as an :class:`InterruptController` if it has one, else None."""
    if getattr(vm, "interrupt_controller", False):
        return vm  # type: ignore[return-value]
    return None


def multiprocessor_vcpu(vcpu: AccelVcpu) -> MultiprocessorVcpu | None:
    """``vcpu`` as a :class:`MultiprocessorVcpu` if it supports INIT/SIPI start-up, else None."""
    if getattr(vcpu, "multiprocessor", False):
        return vcpu  # type: ignore[return-value]
    return None


class Accelerator(Protocol):
    """A factory of accelerator VMs (one per host engine)."""

    name: str

    @staticmethod
    def available() -> tuple[bool, str]:
        """Whether this accelerator can run here, and a one-line reason."""

    def create_vm(self) -> AccelVm:
        """Create an empty VM."""
