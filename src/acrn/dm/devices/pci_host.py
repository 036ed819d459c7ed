"""The PCI host bridge at 00:00.0 (acrn-dm ``-s 0:0,hostbridge``, ``devicemodel/hw/pci/hostbridge.c``).

acrn-dm's host bridge is a type-0 function of class "bridge, host" (0x06/0x00) with vendor and
device 0x1275 (NetApp, kept from bhyve) and a PCI Express capability of type root port; it has no
BARs and no interrupt.  Linux's direct PCI probe (``pci_sanity_check``) accepts a bus on which it
finds a host bridge, so this is what a guest needs to see before it scans the rest of bus 0.

Config accesses reach it only as PCICFG requests: the HSM driver keeps 0xCF8 in the kernel and turns
0xCFC-0xCFF into PCICFG with bus/dev/func/reg (``drivers/virt/acrn/ioreq.c: handle_cf8cfc``); absent
functions read all-ones through :class:`acrn.dm.pci.PciBus`.
"""

from __future__ import annotations

from typing import Final

from acrn.dm.pci import (
    PCIM_HDRTYPE_NORMAL,
    PCIR_CLASS,
    PCIR_DEVICE,
    PCIR_HDRTYPE,
    PCIR_SUBCLASS,
    PCIR_VENDOR,
    PciBus,
    PciConfigSpace,
)

#: acrn-dm hostbridge.c: NetApp's IDs, as in bhyve.
HOSTBRIDGE_VENDOR: Final = 0x1275
HOSTBRIDGE_DEVICE: Final = 0x1275
PCIC_BRIDGE: Final = 0x06
PCIS_BRIDGE_HOST: Final = 0x00
#: PCI Express capability (ID 0x10); capability register: version 2, device/port type 4 = root port.
PCIY_EXPRESS: Final = 0x10
PCIEM_TYPE_ROOT_PORT: Final = 0x4
PCIE_CAP_VERSION: Final = 0x2
#: Body of acrn-dm's ``pci_emul_add_pciecap``: 0x3C bytes in all (the v2 structure).
PCIE_CAP_LEN: Final = 0x3C
PCIE_LINK_CAP_GEN1_X1: Final = 0x411
PCIE_LINK_STATUS_GEN1_X1: Final = 0x11


class PciHostBridge(PciConfigSpace):
    """The host bridge function; :meth:`attach` puts it at 00:00.0 of a :class:`PciBus`."""

    def __init__(self, vendor: int = HOSTBRIDGE_VENDOR, device: int = HOSTBRIDGE_DEVICE) -> None:
        super().__init__()
        self.set(PCIR_VENDOR, 2, vendor)
        self.set(PCIR_DEVICE, 2, device)
        self.set(PCIR_HDRTYPE, 1, PCIM_HDRTYPE_NORMAL)
        self.set(PCIR_CLASS, 1, PCIC_BRIDGE)
        self.set(PCIR_SUBCLASS, 1, PCIS_BRIDGE_HOST)
        body = bytearray(PCIE_CAP_LEN - 2)
        # Offsets inside the capability minus its 2-byte header: capabilities @2, link
        # capabilities @0x0C, link status @0x12 (gen1, x1, as acrn-dm sets them).
        body[0:2] = ((PCIEM_TYPE_ROOT_PORT << 4) | PCIE_CAP_VERSION).to_bytes(2, "little")
        body[0x0C - 2 : 0x0C + 2] = PCIE_LINK_CAP_GEN1_X1.to_bytes(4, "little")
        body[0x12 - 2 : 0x12] = PCIE_LINK_STATUS_GEN1_X1.to_bytes(2, "little")
        self.pcie_cap = self.add_capability(PCIY_EXPRESS, bytes(body))

    def attach(self, bus: PciBus, bus_nr: int = 0, dev: int = 0, func: int = 0) -> None:
        """Claim bus:dev.func (00:00.0 by default, where acrn-dm puts it)."""
        bus.add(bus_nr, dev, func, self)
