"""The accelerator interface: what an execution engine offers the emulated hypervisor.

Accelerators know nothing of ACRN.  They take an architectural :class:`~acrn.arch.CpuState` and
guest-memory slots backed by host memory (a host virtual address in this process), run a vCPU and
report why it stopped as a :class:`VmExit`.  Both the KVM and the soft (unicorn) accelerator
implement it and pass the same conformance suite.

Threading contract: one thread calls :meth:`AccelVcpu.run` for a given vCPU; any thread may call
:meth:`AccelVcpu.kick`, which makes the current or next ``run`` return :class:`KickExit` promptly.
"""

from __future__ import annotations

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

    def create_vcpu(self, vcpu_id: int) -> AccelVcpu:
        """Create a vCPU; its state is undefined until :meth:`AccelVcpu.set_state`."""

    def close(self) -> None:
        """Release every vCPU, mapping and fd of the VM."""


class Accelerator(Protocol):
    """A factory of accelerator VMs (one per host engine)."""

    name: str

    @staticmethod
    def available() -> tuple[bool, str]:
        """Whether this accelerator can run here, and a one-line reason."""

    def create_vm(self) -> AccelVm:
        """Create an empty VM."""
