"""Device models, one module per device; each registers its own port/MMIO ranges on an IoBus."""

from __future__ import annotations

from acrn.dm.devices.debugexit import DebugExit
from acrn.dm.devices.uart16550 import COM1_BASE, COM1_IRQ, Uart16550

__all__ = ["COM1_BASE", "COM1_IRQ", "DebugExit", "Uart16550"]
