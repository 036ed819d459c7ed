"""The interrupt slice of ``<linux/kvm.h>`` (x86-64): in-kernel irqchip lines, MSIs, MP state, events.

Kept apart from :mod:`acrn.emu.accel.kvm_abi` so that the irqchip work did not edit that shared
module; the same rule holds (only this module knows these byte layouts, names are the C names) and
``tests/emu/test_irq_kvm_layout.py`` compares every value with the compiled header.

The functions below are thin wrappers, one per ioctl, used by :mod:`acrn.emu.accel.kvm`.
"""

from __future__ import annotations

import ctypes
from ctypes import c_uint8, c_uint32, c_uint64
from typing import Final

from acrn.emu.accel.kvm_abi import _io, _ior, _iow, _iowr
from acrn.emu.accel.kvm_sys import kvm_ioctl


class kvm_irq_level(ctypes.LittleEndianStructure):
    _fields_ = [("irq", c_uint32), ("level", c_uint32)]


class kvm_msi(ctypes.LittleEndianStructure):
    _fields_ = [
        ("address_lo", c_uint32),
        ("address_hi", c_uint32),
        ("data", c_uint32),
        ("flags", c_uint32),
        ("devid", c_uint32),
        ("pad", c_uint8 * 12),
    ]


class kvm_mp_state(ctypes.LittleEndianStructure):
    _fields_ = [("mp_state", c_uint32)]


class _events_exception(ctypes.LittleEndianStructure):
    _fields_ = [
        ("injected", c_uint8),
        ("nr", c_uint8),
        ("has_error_code", c_uint8),
        ("pending", c_uint8),
        ("error_code", c_uint32),
    ]


class _events_interrupt(ctypes.LittleEndianStructure):
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("soft", c_uint8), ("shadow", c_uint8)]


class _events_nmi(ctypes.LittleEndianStructure):
    _fields_ = [("injected", c_uint8), ("pending", c_uint8), ("masked", c_uint8), ("pad", c_uint8)]


class _events_smi(ctypes.LittleEndianStructure):
    _fields_ = [
        ("smm", c_uint8),
        ("pending", c_uint8),
        ("smm_inside_nmi", c_uint8),
        ("latched_init", c_uint8),
    ]


class _events_triple_fault(ctypes.LittleEndianStructure):
    _fields_ = [("pending", c_uint8)]


class kvm_vcpu_events(ctypes.LittleEndianStructure):
    _fields_ = [
        ("exception", _events_exception),
        ("interrupt", _events_interrupt),
        ("nmi", _events_nmi),
        ("sipi_vector", c_uint32),
        ("flags", c_uint32),
        ("smi", _events_smi),
        ("triple_fault", _events_triple_fault),
        ("reserved", c_uint8 * 26),
        ("exception_has_payload", c_uint8),
        ("exception_payload", c_uint64),
    ]


class kvm_irq_routing_irqchip(ctypes.LittleEndianStructure):
    _fields_ = [("irqchip", c_uint32), ("pin", c_uint32)]


class _routing_union(ctypes.Union):
    _fields_ = [("irqchip", kvm_irq_routing_irqchip), ("pad", c_uint32 * 8)]


class kvm_irq_routing_entry(ctypes.LittleEndianStructure):
    _fields_ = [
        ("gsi", c_uint32),
        ("type", c_uint32),
        ("flags", c_uint32),
        ("pad", c_uint32),
        ("u", _routing_union),
    ]


class kvm_irq_routing(ctypes.LittleEndianStructure):
    _fields_ = [("nr", c_uint32), ("flags", c_uint32)]


class kvm_irqchip(ctypes.LittleEndianStructure):
    _fields_ = [("chip_id", c_uint32), ("pad", c_uint32), ("chip", ctypes.c_char * 512)]


#: Every structure, for the layout test (anonymous C members are checked through their parents).
STRUCTS: Final[tuple[type[ctypes.Structure], ...]] = (
    kvm_irq_level,
    kvm_msi,
    kvm_mp_state,
    kvm_vcpu_events,
    kvm_irq_routing_irqchip,
    kvm_irq_routing_entry,
    kvm_irq_routing,
    kvm_irqchip,
)

# VM fd.
KVM_IRQ_LINE: Final = _iow(0x61, ctypes.sizeof(kvm_irq_level))
KVM_GET_IRQCHIP: Final = _iowr(0x62, ctypes.sizeof(kvm_irqchip))
KVM_SET_IRQCHIP: Final = _ior(0x63, ctypes.sizeof(kvm_irqchip))  # sic: _IOR in the header
KVM_SET_GSI_ROUTING: Final = _iow(0x6A, ctypes.sizeof(kvm_irq_routing))
KVM_SIGNAL_MSI: Final = _iow(0xA5, ctypes.sizeof(kvm_msi))
# vCPU fd.
KVM_GET_MP_STATE: Final = _ior(0x98, ctypes.sizeof(kvm_mp_state))
KVM_SET_MP_STATE: Final = _iow(0x99, ctypes.sizeof(kvm_mp_state))
KVM_GET_VCPU_EVENTS: Final = _ior(0x9F, ctypes.sizeof(kvm_vcpu_events))
KVM_SET_VCPU_EVENTS: Final = _iow(0xA0, ctypes.sizeof(kvm_vcpu_events))
KVM_NMI: Final = _io(0x9A)

IOCTLS: Final = {
    "KVM_IRQ_LINE": KVM_IRQ_LINE,
    "KVM_GET_IRQCHIP": KVM_GET_IRQCHIP,
    "KVM_SET_IRQCHIP": KVM_SET_IRQCHIP,
    "KVM_SET_GSI_ROUTING": KVM_SET_GSI_ROUTING,
    "KVM_SIGNAL_MSI": KVM_SIGNAL_MSI,
    "KVM_GET_MP_STATE": KVM_GET_MP_STATE,
    "KVM_SET_MP_STATE": KVM_SET_MP_STATE,
    "KVM_GET_VCPU_EVENTS": KVM_GET_VCPU_EVENTS,
    "KVM_SET_VCPU_EVENTS": KVM_SET_VCPU_EVENTS,
    "KVM_NMI": KVM_NMI,
}

KVM_MP_STATE_RUNNABLE: Final = 0
KVM_MP_STATE_UNINITIALIZED: Final = 1
KVM_MP_STATE_INIT_RECEIVED: Final = 2
KVM_MP_STATE_HALTED: Final = 3
KVM_MP_STATE_SIPI_RECEIVED: Final = 4

KVM_VCPUEVENT_VALID_NMI_PENDING: Final = 0x00000001
KVM_VCPUEVENT_VALID_SMM: Final = 0x00000008

KVM_IRQ_ROUTING_IRQCHIP: Final = 1
KVM_IRQCHIP_PIC_MASTER: Final = 0
KVM_IRQCHIP_PIC_SLAVE: Final = 1
KVM_IRQCHIP_IOAPIC: Final = 2
KVM_IOAPIC_NUM_PINS: Final = 24
KVM_CAP_SIGNAL_MSI: Final = 77
KVM_CAP_IRQ_ROUTING: Final = 25

CONSTANTS: Final = {
    n: v
    for n, v in dict(globals()).items()
    if (n.startswith("KVM_MP_STATE_") or n.startswith("KVM_IRQCHIP_") or n.startswith("KVM_CAP_"))
    or n.startswith("KVM_VCPUEVENT_VALID_")
    or n in ("KVM_IRQ_ROUTING_IRQCHIP", "KVM_IOAPIC_NUM_PINS")
}


# ---- VM fd ---------------------------------------------------------------------------------------
def irq_line(vm_fd: int, gsi: int, level: int) -> None:
    """``KVM_IRQ_LINE``: drive one KVM GSI (through the routing table) to ``level``."""
    kvm_ioctl(vm_fd, "KVM_IRQ_LINE", KVM_IRQ_LINE, kvm_irq_level(irq=gsi, level=level))


def signal_msi(vm_fd: int, address: int, data: int) -> int:
    """``KVM_SIGNAL_MSI``: > 0 delivered, 0 blocked by the guest (e.g. LAPIC disabled)."""
    msi = kvm_msi(address_lo=address & 0xFFFFFFFF, address_hi=(address >> 32) & 0xFFFFFFFF, data=data)
    return kvm_ioctl(vm_fd, "KVM_SIGNAL_MSI", KVM_SIGNAL_MSI, msi)


def set_gsi_routing(vm_fd: int, routes: list[tuple[int, int, int]]) -> None:
    """``KVM_SET_GSI_ROUTING`` with irqchip entries only: (gsi, irqchip, pin) each."""
    head = ctypes.sizeof(kvm_irq_routing)
    esz = ctypes.sizeof(kvm_irq_routing_entry)
    buf = bytearray(head + len(routes) * esz)
    kvm_irq_routing.from_buffer(buf).nr = len(routes)
    for i, (gsi, chip, pin) in enumerate(routes):
        e = kvm_irq_routing_entry.from_buffer(buf, head + i * esz)
        e.gsi, e.type = gsi, KVM_IRQ_ROUTING_IRQCHIP
        e.u.irqchip.irqchip, e.u.irqchip.pin = chip, pin
    kvm_ioctl(vm_fd, "KVM_SET_GSI_ROUTING", KVM_SET_GSI_ROUTING, buf)


def get_irqchip(vm_fd: int, chip_id: int) -> kvm_irqchip:
    chip = kvm_irqchip(chip_id=chip_id)
    kvm_ioctl(vm_fd, "KVM_GET_IRQCHIP", KVM_GET_IRQCHIP, chip)
    return chip


def set_irqchip(vm_fd: int, chip: kvm_irqchip) -> None:
    kvm_ioctl(vm_fd, "KVM_SET_IRQCHIP", KVM_SET_IRQCHIP, chip)


# ---- vCPU fd -------------------------------------------------------------------------------------
def get_mp_state(vcpu_fd: int) -> int:
    """``KVM_GET_MP_STATE``.  Note: KVM first processes pending INIT/SIPI events here."""
    st = kvm_mp_state()
    kvm_ioctl(vcpu_fd, "KVM_GET_MP_STATE", KVM_GET_MP_STATE, st)
    return int(st.mp_state)


def set_mp_state(vcpu_fd: int, state: int) -> None:
    kvm_ioctl(vcpu_fd, "KVM_SET_MP_STATE", KVM_SET_MP_STATE, kvm_mp_state(mp_state=state))


def get_vcpu_events(vcpu_fd: int) -> kvm_vcpu_events:
    ev = kvm_vcpu_events()
    kvm_ioctl(vcpu_fd, "KVM_GET_VCPU_EVENTS", KVM_GET_VCPU_EVENTS, ev)
    return ev


def set_vcpu_events(vcpu_fd: int, ev: kvm_vcpu_events) -> None:
    kvm_ioctl(vcpu_fd, "KVM_SET_VCPU_EVENTS", KVM_SET_VCPU_EVENTS, ev)


def take_latched_init(vcpu_fd: int) -> bool:
    """Consume an INIT the local APIC latched but KVM has not processed yet; True if there was one.

    KVM processes a pending INIT (and resets the vCPU) only inside ``KVM_RUN`` or
    ``KVM_GET_MP_STATE``; ``KVM_GET_VCPU_EVENTS`` reports it as ``smi.latched_init`` without
    processing it, and ``KVM_SET_VCPU_EVENTS`` with ``KVM_VCPUEVENT_VALID_SMM`` and
    ``latched_init = 0`` clears it.  This is how an AP that has never run ignores INIT, as ACRN's
    vCPUs in VCPU_INIT do (``hypervisor/arch/x86/guest/vlapic.c: vlapic_process_init_sipi``).
    """
    ev = get_vcpu_events(vcpu_fd)
    if not ev.smi.latched_init:
        return False
    ev.flags = KVM_VCPUEVENT_VALID_SMM  # apply only the SMM/INIT part (plus the always-applied fields)
    ev.smi.latched_init = 0
    set_vcpu_events(vcpu_fd, ev)
    return True
