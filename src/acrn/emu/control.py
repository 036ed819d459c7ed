"""The emulator's control port: what an in-process device model may ask of the emulator.

A device model on ACRN knows its VM only through the HSM's ioctls.  In the same process as the
emulator it may also do what the kernel HSM cannot offer, and this class is all of that, so that
``acrn.dm`` drives the real HSM and the emulator with the same code and never reaches into the
emulator's internals:

* **stops** the hypervisor sees and the HSM does not report (triple fault, entry failure, a halt
  with interrupts off): :meth:`on_stop`, :meth:`remove_stop_callback`, :meth:`wait_stop`;
* **the fast ioreq path**: :meth:`set_fast_handler` handles a VM's requests on its vCPU threads,
  with the same slot states as the faithful ATTACH/NOTIFY loop;
* **what ran**: :meth:`vcpu_ids`, :meth:`vcpu_states` (live registers of a paused VM),
  :meth:`exit_counts`;
* **how vCPUs run**: :attr:`accel_name`, :meth:`set_accelerator`, :meth:`use_engine` (KVM with the
  soft-CPU fallback, or the hybrid).

``acrn.device.EmulatedDevice.control`` is one of these; transports to a real or served HSM have
``control = None``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from acrn.emu.runtime import FastHandler, StopReport

if TYPE_CHECKING:
    from acrn.emu.accel.fallback import FallbackStats
    from acrn.emu.runtime import Runtime

__all__ = ["EmulatorControl", "FastHandler", "StopReport"]


class EmulatorControl:
    """The control port of one :class:`~acrn.emu.machine.Machine`'s runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    # ------------------------------------------------------------------ how vCPUs run
    @property
    def accel_name(self) -> str:
        """The accelerator VMs started from now on run on (``kvm``, ``soft``, ``fallback``, ``hybrid``)."""
        return self._runtime.accel_name

    def set_accelerator(self, name: str) -> None:
        """Choose the accelerator (``auto``, ``kvm``, ``soft``) for VMs started from now on."""
        self._runtime.set_accelerator(name)

    @property
    def pit_owner(self) -> str:
        """Who answers the PIT's ports for VMs created from now on (``Platform.pit_owner``)."""
        return str(self._runtime.hv.platform.pit_owner)

    @pit_owner.setter
    def pit_owner(self, owner: str) -> None:
        if owner not in ("hypervisor-kvm", "device-model"):
            raise ValueError(f"pit_owner {owner!r}: must be hypervisor-kvm or device-model")
        self._runtime.hv.platform.pit_owner = owner  # type: ignore[assignment]

    def use_engine(self, *, hybrid: bool) -> FallbackStats:
        """Run VMs started from now on on KVM with the soft-CPU fallback, or (``hybrid``) on the soft
        CPU until their first interrupt or exception; the engine's event counts."""
        from acrn.emu.accel import get_accelerator
        from acrn.emu.accel.fallback import FallbackAccelerator

        acc = get_accelerator("hybrid" if hybrid else "fallback")
        assert isinstance(acc, FallbackAccelerator)
        self._runtime.set_accelerator(acc)
        return acc.stats

    # ------------------------------------------------------------------ stops
    def on_stop(self, callback: Callable[[StopReport], None]) -> None:
        """Call ``callback(report)`` (on the vCPU thread) whenever a vCPU stops."""
        self._runtime.on_stop(callback)

    def remove_stop_callback(self, callback: Callable[[StopReport], None]) -> None:
        self._runtime.remove_stop_callback(callback)

    def wait_stop(self, vmid: int, timeout: float | None = None) -> StopReport | None:
        """Block until a vCPU of ``vmid`` stops (or the timeout passes); consume the report."""
        return self._runtime.wait_stop(vmid, timeout=timeout)

    # ------------------------------------------------------------------ the fast ioreq path
    def set_fast_handler(self, vmid: int, handler: FastHandler | None) -> None:
        """Handle ``vmid``'s requests on its vCPU threads; None goes back to ATTACH/NOTIFY."""
        self._runtime.set_fast_handler(vmid, handler)

    # ------------------------------------------------------------------ what ran
    def vcpu_ids(self, vmid: int) -> list[int]:
        """The vCPUs of ``vmid`` that have run (an AP appears once the guest started it)."""
        vmrt = self._runtime.vms.get(vmid)
        return list(vmrt.vcpus) if vmrt is not None else []

    def vcpu_states(self, vmid: int) -> dict[int, dict[str, Any]]:
        """Each run vCPU's registers as the accelerator holds them (live once the VM is paused)."""
        vmrt = self._runtime.vms.get(vmid)
        if vmrt is None:
            return {}
        return {vid: state.to_dict() for vid, state in vmrt.accel_states().items()}

    def exit_counts(self, vmid: int) -> dict[str, int]:
        """Exits of ``vmid``'s vCPUs so far, by kind (``pio``, ``mmio``, ``halt``, ...)."""
        vmrt = self._runtime.vms.get(vmid)
        if vmrt is None:
            return {}
        counts = vmrt.exit_counts()
        return {f.name: int(getattr(counts, f.name)) for f in dataclasses.fields(counts)}
