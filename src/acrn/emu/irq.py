"""Interrupt routing: from the hypervisor's SET_IRQLINE / INJECT_MSI to an accelerator's irqchip.

ACRN's hypervisor validates and records both hypercalls (:mod:`acrn.emu.hv`; ``hcall_set_irqline`` and
``hcall_inject_msi`` in ``hypervisor/common/hypercall.c``)
and this module delivers them, the way ACRN's vIOAPIC/vPIC/vLAPIC would, to the accelerator's
interrupt controllers (:class:`~acrn.emu.accel.base.InterruptController`; the KVM accelerator's
in-kernel irqchip).  Rules, each with a test in tests/emu/test_irq.py:

* SET_IRQLINE's operation becomes a sequence of line levels (``hcall_set_irqline``): SET_HIGH -> high,
  SET_LOW -> low, RAISING_PULSE -> high then low, FALLING_PULSE -> low then high; any other
  operation does nothing (the hypercall still succeeds).
* The vIOAPIC pin ``gsi`` is always driven.  For ``gsi < 16`` the vPIC is driven too, with
  **GSI 2 on PIC IRQ 0** (the PIT's input; IRQ 2 is the cascade), as ACRN's ``vpic_set_irqline``.
* INJECT_MSI: the address must be 0xFEExxxxx (checked by the hypervisor before it gets here);
  destination APIC ID = address bits 19:12, destination mode = bit 2 (1 = logical), redirection
  hint = bit 3; vector = data bits 7:0, delivery mode = data bits 10:8.  ACRN always delivers an
  MSI edge-triggered, so the trigger-mode bit (data bit 15) is cleared before delivery.

Differences from ACRN, documented rather than hidden:

* ACRN's vIOAPIC has 48 pins (VIOAPIC_RTE_NUM) and the hypervisor accepts GSIs up to 47; KVM's
  in-kernel IOAPIC has 24.  A SET_IRQLINE on GSI 24-47 succeeds (as on ACRN) but reaches no pin
  on KVM: it is dropped with a log message.
* Line levels set before the VM first starts are replayed when the accelerator VM is created
  (:meth:`IrqRouter.replay`); MSIs injected before that are lost (on ACRN they would wait in the
  vLAPIC's IRR).
* The soft accelerator (unicorn) has no interrupt controllers: interrupts are recorded by the
  hypervisor and logged here, never delivered.  Use KVM for guests that need interrupts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from acrn import uapi
from acrn.emu.accel.base import AccelVm, InterruptController, interrupt_controller

log = logging.getLogger(__name__)

#: vPIC inputs (two cascaded 8259s); GSIs below this drive the vPIC as well (NR_VPIC_PINS_TOTAL).
NR_VPIC_PINS_TOTAL: Final = 16
#: The PIC input that GSI 2 drives (ACRN wires the PIT to IOAPIC pin 2 and PIC IRQ 0).
PIT_GSI: Final = 2
MSI_ADDR_BASE: Final = 0xFEE
MSI_DATA_TRIGGER_LEVEL: Final = 1 << 15

#: SET_IRQLINE operation -> the line levels it produces, in order (``hcall_set_irqline``).
IRQLINE_LEVELS: Final[dict[int, tuple[bool, ...]]] = {
    uapi.GSI_SET_HIGH: (True,),
    uapi.GSI_SET_LOW: (False,),
    uapi.GSI_RAISING_PULSE: (True, False),
    uapi.GSI_FALLING_PULSE: (False, True),
}


def irqline_levels(op: int) -> tuple[bool, ...]:
    """The levels a SET_IRQLINE operation drives, in order; () for an unknown operation."""
    return IRQLINE_LEVELS.get(op, ())


def pic_pin(gsi: int) -> int | None:
    """The vPIC input a GSI also drives, or None (GSI 2 -> PIC IRQ 0, ``hypervisor/dm/vpic.c:
    vpic_set_irqline``)."""
    if not 0 <= gsi < NR_VPIC_PINS_TOTAL:
        return None
    return 0 if gsi == PIT_GSI else gsi


def is_msi_address(address: int) -> bool:
    """Bits 31:20 are 0xFEE: the only addresses ``vlapic_inject_msi`` accepts."""
    return (address >> 20) & 0xFFF == MSI_ADDR_BASE


@dataclass(frozen=True)
class MsiMessage:
    """An MSI address/data pair decoded as ACRN's ``vlapic_inject_msi`` reads it
    (``hypervisor/arch/x86/guest/vlapic.c``)."""

    dest_id: int
    logical: bool
    redirection_hint: bool
    vector: int
    delivery_mode: int

    @classmethod
    def decode(cls, address: int, data: int) -> MsiMessage:
        return cls(
            dest_id=(address >> 12) & 0xFF,
            logical=bool(address & (1 << 2)),
            redirection_hint=bool(address & (1 << 3)),
            vector=data & 0xFF,
            delivery_mode=(data >> 8) & 0x7,
        )

    def __str__(self) -> str:
        mode = "logical" if self.logical else "physical"
        return f"vector {self.vector:#x} to APIC {self.dest_id} ({mode}, delivery mode {self.delivery_mode})"


def edge_msi_data(data: int) -> int:
    """The MSI data with the trigger-mode bit cleared: ACRN delivers every MSI edge-triggered."""
    return data & ~MSI_DATA_TRIGGER_LEVEL & 0xFFFFFFFF


class IrqRouter:
    """Delivers one VM's interrupt hypercalls to its accelerator VM (one per :class:`VmRuntime`)."""

    def __init__(self, accel_vm: AccelVm) -> None:
        self.chip: InterruptController | None = interrupt_controller(accel_vm)
        self._dropped_logged: set[int] = set()

    @property
    def delivers(self) -> bool:
        """Whether interrupts reach the guest (the accelerator VM has interrupt controllers)."""
        return self.chip is not None

    def set_line(self, gsi: int, level: bool) -> None:
        """Drive ACRN GSI ``gsi`` to ``level``: its vPIC input (if any), then its vIOAPIC pin."""
        chip = self.chip
        if chip is None:
            return
        pin = pic_pin(gsi)
        if pin is not None:
            chip.set_pic_line(pin, level)
        if gsi < chip.ioapic_pins:
            chip.set_ioapic_line(gsi, level)
        elif gsi not in self._dropped_logged:
            self._dropped_logged.add(gsi)
            log.warning(
                "GSI %d: the accelerator's IOAPIC has %d pins; the line is not delivered",
                gsi,
                chip.ioapic_pins,
            )

    def irqline(self, gsi: int, op: int) -> None:
        """One accepted SET_IRQLINE (the hypervisor checked the GSI range and the VM state)."""
        if self.chip is None:
            log.debug("SET_IRQLINE gsi %d op %d: no interrupt controller on this accelerator", gsi, op)
            return
        for level in irqline_levels(op):
            self.set_line(gsi, level)

    def msi(self, address: int, data: int) -> bool:
        """One accepted INJECT_MSI; True if a local APIC took it."""
        if self.chip is None:
            log.debug(
                "INJECT_MSI %s: no interrupt controller on this accelerator", MsiMessage.decode(address, data)
            )
            return False
        accepted = self.chip.signal_msi(address & 0xFFFFFFFF, edge_msi_data(data))
        if not accepted:
            log.debug("INJECT_MSI %s: not accepted (local APIC disabled?)", MsiMessage.decode(address, data))
        return accepted

    def replay(self, ioapic_lines: dict[int, int], pic_lines: dict[int, int]) -> None:
        """Raise the lines the hypervisor recorded high (levels set before the VM ran)."""
        chip = self.chip
        if chip is None:
            return
        for pin, level in sorted(pic_lines.items()):
            if level and 0 <= pin < NR_VPIC_PINS_TOTAL:
                chip.set_pic_line(pin, True)
        for pin, level in sorted(ioapic_lines.items()):
            if level and 0 <= pin < chip.ioapic_pins:
                chip.set_ioapic_line(pin, True)

    def reset(self) -> None:
        """RESET_VM: ACRN resets the vIOAPIC (and vPIC) with the VM."""
        if self.chip is not None:
            self.chip.reset_interrupt_controllers()


__all__ = [
    "IRQLINE_LEVELS",
    "IrqRouter",
    "MsiMessage",
    "edge_msi_data",
    "irqline_levels",
    "is_msi_address",
    "pic_pin",
]
