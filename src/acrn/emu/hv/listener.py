"""What the emulated hypervisor tells a runtime about state changes: :class:`HvListener`.

A runtime subclasses it and registers it with :meth:`acrn.emu.hv.Hypervisor.add_listener`; the
hypervisor calls every registered listener through one :class:`Broadcast`, never by method name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from acrn.emu.hv.vm import HvVm


class HvListener:
    """What the hypervisor tells about state changes: subclass it and override what you need.

    The callbacks run synchronously under ``Hypervisor.lock``, after the state changed, on the
    thread that made the hypercall.  They must not block; they may read the hypervisor's state.
    """

    def vm_created(self, vm: HvVm) -> None:
        """CREATE_VM made ``vm``."""

    def vm_started(self, vm: HvVm) -> None:
        """START_VM: the BSP is RUNNING."""

    def vm_paused(self, vm: HvVm) -> None:
        """PAUSE_VM (or the emulator's forced shutdown) made every vCPU a zombie."""

    def vm_reset(self, vm: HvVm) -> None:
        """RESET_VM: the vCPUs are back in INIT with their power-on registers."""

    def vm_destroyed(self, vm: HvVm) -> None:
        """DESTROY_VM: ``vm`` is gone."""

    def memory_changed(self, vm: HvVm) -> None:
        """SET_MEMORY_REGIONS or WRITE_PROTECT_PAGE changed the EPT."""

    def request_completed(self, vm: HvVm, vcpu_id: int) -> None:
        """NOTIFY_REQUEST_FINISH signalled the vCPU's IOREQ event."""

    def irqline(self, vm: HvVm, gsi: int, op: int) -> None:
        """SET_IRQLINE was accepted."""

    def msi(self, vm: HvVm, addr: int, data: int) -> None:
        """INJECT_MSI was accepted."""


class Broadcast(HvListener):
    """Every registered listener, called in order: the hypervisor's one typed way to notify."""

    def __init__(self) -> None:
        self.listeners: list[HvListener] = []

    def vm_created(self, vm: HvVm) -> None:
        for listener in list(self.listeners):
            listener.vm_created(vm)

    def vm_started(self, vm: HvVm) -> None:
        for listener in list(self.listeners):
            listener.vm_started(vm)

    def vm_paused(self, vm: HvVm) -> None:
        for listener in list(self.listeners):
            listener.vm_paused(vm)

    def vm_reset(self, vm: HvVm) -> None:
        for listener in list(self.listeners):
            listener.vm_reset(vm)

    def vm_destroyed(self, vm: HvVm) -> None:
        for listener in list(self.listeners):
            listener.vm_destroyed(vm)

    def memory_changed(self, vm: HvVm) -> None:
        for listener in list(self.listeners):
            listener.memory_changed(vm)

    def request_completed(self, vm: HvVm, vcpu_id: int) -> None:
        for listener in list(self.listeners):
            listener.request_completed(vm, vcpu_id)

    def irqline(self, vm: HvVm, gsi: int, op: int) -> None:
        for listener in list(self.listeners):
            listener.irqline(vm, gsi, op)

    def msi(self, vm: HvVm, addr: int, data: int) -> None:
        for listener in list(self.listeners):
            listener.msi(vm, addr, data)
