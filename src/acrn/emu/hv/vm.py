"""The emulated hypervisor's per-VM and per-vCPU records (read-mostly views for the runtime and tests).

Only :class:`acrn.emu.hv.Hypervisor` and its handlers (``acrn.emu.hv.hc_*``) mutate these, under its
lock; everyone else reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from acrn import uapi
from acrn.arch import CpuState
from acrn.emu.hv.state import VcpuState, VmState
from acrn.emu.platform import VmConfig
from acrn.rules import reset_vcpu_state


@dataclass(frozen=True)
class EptRegion:
    """One EPT mapping: guest-physical [gpa, gpa+size) -> host (process) address ``hpa``.

    ``prot`` holds the ACRN_MEM_ACCESS_* bits, ``memtype`` the single ACRN_MEM_TYPE_* value chosen
    by ACRN's priority rule (``hcall_set_vm_memory_regions``).
    """

    gpa: int
    hpa: int
    size: int
    prot: int
    memtype: int

    @property
    def end(self) -> int:
        return self.gpa + self.size


@dataclass
class Vcpu:
    """One vCPU: ``regs`` is the landed architectural state a runtime loads at first entry."""

    vcpu_id: int
    pcpu_id: int
    lapic_id: int
    state: VcpuState = VcpuState.INIT
    regs: CpuState = field(default_factory=reset_vcpu_state, repr=False)
    #: The ``acrn_vcpu_regs`` blob SET_VCPU_REGS last landed (None after create/RESET), kept so that
    #: a fault report can validate the state the vCPU was started with.
    set_regs: bytes | None = field(default=None, repr=False)
    tsc_aux: int = 0
    #: The type of the request this vCPU last inserted (ACRN's ``vcpu->req.io_type``), for post-work.
    io_type: int | None = None
    io_direction: int = 0
    io_size: int = 0


@dataclass(frozen=True)
class PtdevIntx:
    """An INTx remapping recorded by SET_PTDEV_INTR (physical pin -> virtual pin)."""

    virt_bdf: int
    phys_bdf: int
    virt_pin: int
    phys_pin: int
    pic_pin: bool


@dataclass
class HvVm:
    """A live VM in one config slot.  ``vmid`` is relative to the Service VM (what userspace sees)."""

    vmid: int
    abs_id: int
    name: str
    config: VmConfig = field(repr=False)
    state: VmState
    guest_flags: int
    cpu_affinity: int
    vcpus: list[Vcpu] = field(default_factory=list, repr=False)
    ioreq_buffer: int | None = None
    memory_regions: list[EptRegion] = field(default_factory=list)
    #: The page of the last successful VM_INTR_MONITOR, and the injection delay it set (ms).
    intr_monitor_page: int | None = None
    intr_inject_delay_ms: int = 0
    #: Current levels of the vIOAPIC pins and vPIC pins driven by SET_IRQLINE (absent = low).
    ioapic_lines: dict[int, int] = field(default_factory=dict)
    pic_lines: dict[int, int] = field(default_factory=dict)
    #: Every MSI injected, in order (delivered by the runtime later).
    msis: list[tuple[int, int]] = field(default_factory=list)
    #: Passthrough bookkeeping: virt_bdf -> the ASSIGN_PCIDEV parameters.
    pcidevs: dict[int, uapi.acrn_pcidev] = field(default_factory=dict)
    mmiodevs: list[uapi.acrn_mmiodev] = field(default_factory=list)
    #: Hypervisor-emulated vdevs by vBDF: the CREATE_VDEV parameters.
    vdevs: dict[int, uapi.acrn_vdev] = field(default_factory=dict)
    ptdev_intx: list[PtdevIntx] = field(default_factory=list)

    @property
    def vcpu_num(self) -> int:
        """``hw.created_vcpus``: one vCPU per pCPU of the affinity."""
        return len(self.vcpus)

    @property
    def is_polling_ioreq(self) -> bool:
        """IO completion polling applies to post-launched VMs with the flag (``create_vm``)."""
        return self.config.load_order == "post" and bool(
            self.guest_flags & uapi.GUEST_FLAG_IO_COMPLETION_POLLING
        )

    @property
    def severity(self) -> int:
        return self.config.severity

    def vcpu(self, vcpu_id: int) -> Vcpu | None:
        return self.vcpus[vcpu_id] if 0 <= vcpu_id < len(self.vcpus) else None

    def gpa2hpa(self, gpa: int) -> int | None:
        """The host address behind ``gpa`` in this VM's EPT, or None (INVALID_HPA)."""
        for r in self.memory_regions:
            if r.gpa <= gpa < r.end:
                return r.hpa + (gpa - r.gpa)
        return None

    def is_mapped(self, gpa: int, size: int) -> bool:
        """``ept_is_valid_mr``: every byte of [gpa, gpa+size) is mapped."""
        cur, end = gpa, gpa + size
        for r in sorted(self.memory_regions, key=lambda r: r.gpa):
            if r.end <= cur:
                continue
            if r.gpa > cur:
                return False
            cur = r.end
            if cur >= end:
                return True
        return cur >= end

    def ept_del(self, gpa: int, size: int) -> None:
        """Unmap [gpa, gpa+size), splitting regions that straddle its edges."""
        end = gpa + size
        out: list[EptRegion] = []
        for r in self.memory_regions:
            if r.end <= gpa or r.gpa >= end:
                out.append(r)
                continue
            if r.gpa < gpa:
                out.append(EptRegion(r.gpa, r.hpa, gpa - r.gpa, r.prot, r.memtype))
            if r.end > end:
                out.append(EptRegion(end, r.hpa + (end - r.gpa), r.end - end, r.prot, r.memtype))
        self.memory_regions = sorted(out, key=lambda r: r.gpa)

    def ept_add(self, region: EptRegion) -> None:
        """Map a region; like page-table writes, it replaces whatever was mapped there before."""
        self.ept_del(region.gpa, region.size)
        self.memory_regions = sorted([*self.memory_regions, region], key=lambda r: r.gpa)
