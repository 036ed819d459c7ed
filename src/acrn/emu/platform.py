"""The emulated ACRN platform: pCPUs, VM configuration slots and the hardware facts ACRN reads at boot.

A real ACRN build is configured per board and scenario (``vm_configurations.c``, the board's
VMX capability MSRs, its ACPI C-state table).  The emulator makes that configuration explicit and
replaceable: tests and users build a :class:`Platform` (or take :meth:`Platform.default`) and hand
it to :class:`acrn.emu.hv.Hypervisor`.  Nothing here has behaviour; the rules live in ``acrn.emu.hv``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from acrn import rules, uapi

LoadOrder = Literal["service", "pre", "post"]
#: Who emulates the i8254 PIT (ports 0x40-0x43) and the port-0x61 gate/status bits of a User VM.
PitOwner = Literal["hypervisor-kvm", "device-model"]
PIT_OWNERS: Final = ("hypervisor-kvm", "device-model")

# ACRN's VM severities (hypervisor vm_config.h ``enum acrn_vm_severity``; RTVM_SEVERITY_LEVEL is 0x30
# in the generated configs).  A VM whose severity is above the Service VM's is protected from some
# Service VM requests (``is_severity_pass`` in ``hypervisor/common/hypercall.c``, e.g. ``hcall_pause_vm``).
SEVERITY_SAFETY_VM: Final = 0x40
SEVERITY_RTVM: Final = 0x30
SEVERITY_SERVICE_VM: Final = 0x20
SEVERITY_STANDARD_VM: Final = 0x10

#: Pins of a post-launched VM's vIOAPIC (acrn_common.h VIOAPIC_RTE_NUM).
VIOAPIC_RTE_NUM: Final = 48
#: The Service VM's vIOAPIC mirrors the native IOAPIC (vioapic.h REDIR_ENTRIES_HW).
REDIR_ENTRIES_HW: Final = 120
#: Pins of the vPIC pair (vpic.h NR_VPIC_PINS_TOTAL).
NR_VPIC_PINS_TOTAL: Final = 16


@dataclass
class VmConfig:
    """One ``struct acrn_vm_config`` slot.

    ``name == ""`` and no ``GUEST_FLAG_STATIC_VM`` makes a *dynamic* slot, which CREATE_VM fills
    with the creator's name (``hcall_create_vm``).  ``cpu_affinity`` is a pCPU bitmap.  ``severity`` is
    compared with the Service VM's (``is_severity_pass``).  ``vhwp`` says whether the VM has vHWP
    (PM_GET_CPU_STATE PX_CNT answers 0 instead of -1); ``sworld`` whether secure-world memory was reserved
    for the slot (CREATE_VM with SECURE_WORLD_ENABLED fails without it, as ``get_sworld_vm_index`` < 0 does).
    """

    name: str
    load_order: LoadOrder
    guest_flags: int = 0
    cpu_affinity: int = 0
    severity: int = SEVERITY_STANDARD_VM
    vhwp: bool = False
    sworld: bool = False

    @property
    def is_dynamic(self) -> bool:
        return self.name == "" and not (self.guest_flags & uapi.GUEST_FLAG_STATIC_VM)


@dataclass(frozen=True)
class CxState:
    """One emulated ACPI C-state as PM_GET_CPU_STATE(GET_CX_DATA) reports it (``acrn_cstate_data``)."""

    space_id: int
    bit_width: int
    bit_offset: int
    access_size: int
    address: int
    type: int
    latency: int
    power: int

    def to_bytes(self) -> bytes:
        d = uapi.acrn_cstate_data()
        d.cx_reg.space_id = self.space_id
        d.cx_reg.bit_width = self.bit_width
        d.cx_reg.bit_offset = self.bit_offset
        d.cx_reg.access_size = self.access_size
        d.cx_reg.address = self.address
        d.type = self.type
        d.latency = self.latency
        d.power = self.power
        return bytes(d)


def _default_cx() -> list[CxState]:
    # A typical client-board _CST: C1 via FFixedHW (MWAIT hint 0), C2/C3 via I/O ports at the
    # PMBASE + 0x14/0x15 convention.  The values only need to be plausible and stable.
    return [
        CxState(0x7F, 1, 2, 1, 0x00, 1, 1, 1000),
        CxState(0x01, 8, 0, 0, 0x1814, 2, 50, 500),
        CxState(0x01, 8, 0, 0, 0x1815, 3, 150, 100),
    ]


@dataclass
class Platform:
    """The board and scenario the emulated hypervisor runs on.

    ``vmx_cr*_fixed*`` are the IA32_VMX_CR0/CR4_FIXED0/1 MSR values ACRN derives its CR0/CR4 validity
    masks from (``acrn.rules.CrMasks``).  ``vm_configs`` has exactly ``max_vm_num`` slots (CONFIG_MAX_VM_NUM);
    the absolute VM id is the slot index.
    """

    pcpu_num: int
    max_vm_num: int
    vm_configs: list[VmConfig]
    # Typical Intel values, defined once in acrn.rules (the register tools use the same ones).
    vmx_cr0_fixed0: int = rules.DEFAULT_VMX_CR0_FIXED0
    vmx_cr0_fixed1: int = rules.DEFAULT_VMX_CR0_FIXED1
    vmx_cr4_fixed0: int = rules.DEFAULT_VMX_CR4_FIXED0
    vmx_cr4_fixed1: int = rules.DEFAULT_VMX_CR4_FIXED1
    tsc_khz: int = 2_000_000
    cx_states: list[CxState] = field(default_factory=_default_cx)
    #: The upcall vector ACRN uses until HC_SET_CALLBACK_VECTOR changes it (HYPERVISOR_CALLBACK_VECTOR).
    default_upcall_vector: int = 0xF3
    #: Physical PCI functions (BDFs) the Service VM owns and may pass through: a USB controller at
    #: 00:14.0 and a NIC at 01:00.0, so that ASSIGN_PCIDEV / SET_PTDEV_INTR have something to act on.
    pci_devices: list[int] = field(default_factory=lambda: [0x00A0, 0x0100])
    #: Physical GSIs of the board's IOAPIC (``is_gsi_valid``).
    phys_gsi_num: int = REDIR_ENTRIES_HW
    #: CONFIG_IVSHMEM_ENABLED: without it CREATE_VDEV of an ivshmem device is -EINVAL.
    ivshmem_enabled: bool = False
    #: Who owns the PIT of a User VM (docs/differences.md, "The PIT").  ``"hypervisor-kvm"`` (the
    #: default, what pyacrn's own device model relies on to boot Linux): KVM's in-kernel i8254
    #: (``KVM_CREATE_PIT2`` with ``KVM_PIT_SPEAKER_DUMMY``) absorbs ports 0x40-0x43 and 0x61 and
    #: raises IRQ 0 itself.  ``"device-model"``: ACRN v3.3's own split -- the hypervisor gives a
    #: post-launched VM no PIT (hypervisor/arch/x86/guest/vm.c: create_vm), so those ports become
    #: ioreqs for the device model, which emulates the PIT (acrn-dm: hw/platform/pit.c) and drives
    #: GSI 2 with SET_IRQLINE.  Only the KVM accelerator has an in-kernel PIT; on the soft
    #: accelerator the ports always reach the device model.
    pit_owner: PitOwner = "hypervisor-kvm"

    def __post_init__(self) -> None:
        if not 1 <= self.pcpu_num <= 64:
            raise ValueError(f"pcpu_num {self.pcpu_num}: must be 1..64 (a u64 pCPU bitmap)")
        if len(self.vm_configs) != self.max_vm_num:
            raise ValueError(f"vm_configs has {len(self.vm_configs)} slots, max_vm_num is {self.max_vm_num}")
        if self.pit_owner not in PIT_OWNERS:
            raise ValueError(f"pit_owner {self.pit_owner!r}: must be one of {', '.join(PIT_OWNERS)}")
        services = [i for i, c in enumerate(self.vm_configs) if c.load_order == "service"]
        if len(services) != 1:
            raise ValueError("exactly one VM config slot must be the Service VM")

    @property
    def service_vm_id(self) -> int:
        """Absolute id of the Service VM; relative ids are counted from it
        (``hypervisor/arch/x86/guest/vmcall.c: parse_target_vm``)."""
        return next(i for i, c in enumerate(self.vm_configs) if c.load_order == "service")

    @property
    def cr_masks(self) -> rules.CrMasks:
        """ACRN's CR0/CR4 masks for this board's VMX FIXED MSRs (``acrn.rules.CrMasks``)."""
        return rules.CrMasks.from_vmx_fixed(
            self.vmx_cr0_fixed0, self.vmx_cr0_fixed1, self.vmx_cr4_fixed0, self.vmx_cr4_fixed1
        )

    @property
    def all_pcpus(self) -> int:
        return (1 << self.pcpu_num) - 1

    @classmethod
    def default(cls) -> Platform:
        """A small "shared"-scenario board, chosen so that every ACRN rule is reachable.

        * 4 pCPUs (``acrn.rules.DEFAULT_PCPU_NUM``): enough for multi-vCPU VMs and the "vcpu_id < pCPU
          count" rule of ``hcall_set_vcpu_regs``, small enough that tests stay cheap.
        * CONFIG_MAX_VM_NUM 16, ACRN's usual value.
        * slot 0: the Service VM ("ACRN_Service_VM", all pCPUs), so relative == absolute vmid and the
          first User VM gets vmid 1, as on most shared-scenario boards.
        * slots 1-12: dynamic post-launched slots (empty name) on pCPUs 1-3, for VMs created with an
          unknown name (acrn-dm's usual case); the first such VM gets relative vmid 1.
        * slot 13: "POST_STD_VM1", a static post-launched VM on pCPUs 1-2: makes the affinity subset
          rule of CREATE_VM testable.
        * slot 14: "POST_RT_VM1", a static post-launched RTVM (severity above the Service VM's) on
          pCPU 3: makes the PAUSE/severity quirks testable.
        * slot 15: "PRE_STD_VM1", a pre-launched VM (never run by the emulator) so that the
          "pre-launched target -> -ENOTTY" rule is testable.
        """
        static = uapi.GUEST_FLAG_STATIC_VM
        configs = [VmConfig("ACRN_Service_VM", "service", static, 0b1111, SEVERITY_SERVICE_VM)]
        configs += [VmConfig("", "post", 0, 0b1110, SEVERITY_STANDARD_VM) for _ in range(1, 13)]
        configs += [
            VmConfig("POST_STD_VM1", "post", static, 0b0110, SEVERITY_STANDARD_VM),
            VmConfig("POST_RT_VM1", "post", static, 0b1000, SEVERITY_RTVM),
            VmConfig("PRE_STD_VM1", "pre", static, 0b1000, SEVERITY_STANDARD_VM),
        ]
        return cls(pcpu_num=rules.DEFAULT_PCPU_NUM, max_vm_num=16, vm_configs=configs)
