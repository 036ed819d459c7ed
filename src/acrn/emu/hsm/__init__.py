"""The emulated HSM kernel driver (``drivers/virt/acrn``): per-fd VMs, ioctls, ioreq dispatch, eventfds.

Use it through :class:`acrn.emu.machine.Machine` (``Machine().open()``) or ``acrn.device``.
"""

from __future__ import annotations

from acrn.emu.hsm.driver import HsmDriver, HsmFile
from acrn.emu.hsm.sysfs import RemoveCpu
from acrn.emu.hsm.vm import HsmVm

__all__ = ["HsmDriver", "HsmFile", "HsmVm", "RemoveCpu"]
