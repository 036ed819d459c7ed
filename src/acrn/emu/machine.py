"""One emulated host: the platform, the Service VM's memory, the ACRN hypervisor and the HSM driver.

A :class:`Machine` is what a real box with ACRN and the Service VM kernel's HSM module is;
:meth:`Machine.open` is ``open("/dev/acrn_hsm")`` on it.  Several fds of one machine share the
hypervisor (VM config slots, vmids) and the HSM's global VM list, as on real hardware.
:func:`default_machine` is the process-wide machine that ``acrn.device`` uses by default.
"""

from __future__ import annotations

import threading

from acrn.emu.hsm import HsmDriver, HsmFile
from acrn.emu.hv import Hypervisor
from acrn.emu.platform import Platform
from acrn.emu.runtime import Runtime
from acrn.emu.service_vm_memory import ServiceVmMemory


class Machine:
    """Platform + ServiceVmMemory + Hypervisor + HSM driver state."""

    def __init__(
        self, platform: Platform | None = None, accel: str = "auto", *, strict_arch: bool = False
    ) -> None:
        self.platform = platform if platform is not None else Platform.default()
        self.memory = ServiceVmMemory()
        self.hv = Hypervisor(platform=self.platform, memory=self.memory)
        self.hv.strict_arch = strict_arch
        self.hsm = HsmDriver(self.hv)
        # Executes the VMs' vCPUs from START on; the accelerator itself (and /dev/kvm) is only
        # opened when the first VM starts, so ABI/state-only use never touches it.
        self.runtime = Runtime(self.hv, accel)

    def open(self) -> HsmFile:
        """``open("/dev/acrn_hsm")``: a new fd (its own VM slot in the driver)."""
        return self.hsm.open()

    def __repr__(self) -> str:
        return f"Machine(pcpus={self.platform.pcpu_num}, vms={len(self.hv.vms())}, open_fds={len(self.hsm.open_files)})"


_default: Machine | None = None
_default_lock = threading.Lock()


def default_machine() -> Machine:
    """The process-wide machine, created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Machine()
        return _default
