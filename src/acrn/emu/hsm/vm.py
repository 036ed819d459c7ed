"""``struct acrn_vm`` of the HSM driver: the per-fd state (one fd = one VM,
``drivers/virt/acrn/acrn_drv.h``)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from acrn import uapi

if TYPE_CHECKING:
    from acrn.emu.hsm.driver import HsmDriver
    from acrn.emu.hsm.eventfds import IoeventfdSet, IrqfdSet
    from acrn.emu.hsm.ioreq import IoreqClient

#: drivers/virt/acrn/acrn_drv.h ACRN_MEM_MAPPING_MAX.
ACRN_MEM_MAPPING_MAX = 256


class HsmVm:
    """The kernel's view of one VM; ``vmid == ACRN_INVALID_VMID`` until CREATE_VM succeeds."""

    def __init__(self, driver: HsmDriver) -> None:
        self.driver = driver
        self.vmid = uapi.ACRN_INVALID_VMID
        self.vcpu_num = 0
        #: ACRN_VM_FLAG_DESTROYED: set by a successful destroy and never cleared (``acrn_vm_destroy``).
        self.destroyed = False
        #: ACRN_VM_FLAG_CLEARING_IOREQ (``acrn_ioreq_request_clear``).
        self.clearing = False
        #: Address of the pinned ioreq page (the kernel's ``page_address``), or None.
        self.ioreq_buf: int | None = None
        #: Views of the 16 slots of the page at ``slot_views_base`` (``acrn.emu.hsm.ioreq.slot``).
        self.slot_views: list[uapi.acrn_io_request] = []
        self.slot_views_base: int | None = None
        #: Their ``reqs.pio_request`` members (made with them).
        self.pio_views: list[uapi.acrn_pio_request] = []
        self.clients_lock = threading.Lock()
        self.default_client: IoreqClient | None = None
        #: Non-default clients, newest first (list_add).
        self.ioreq_clients: list[IoreqClient] = []
        self.pci_conf_addr = 0
        #: Never reset, not even by destroy (``acrn_vm_all_ram_unmap``); bounds RAM mappings at 256.
        self.regions_mapping_count = 0
        #: Pinned RAM ranges (vma_base, size).
        self.ram_mappings: list[tuple[int, int]] = []
        self.monitor_page: int | None = None
        self.ioeventfds: IoeventfdSet | None = None
        self.irqfds: IrqfdSet | None = None
        #: Emulator only: hypervisor VMs this fd created and then lost (``docs/differences.md``); release
        #: tears them down so that the emulator does not leak them.
        self.orphans: list[int] = []

    def hypercall(self, hcid: int, param1: int = 0, param2: int = 0) -> int:
        return self.driver.hv.hypercall(hcid, param1, param2)

    @property
    def valid(self) -> bool:
        return self.vmid != uapi.ACRN_INVALID_VMID
