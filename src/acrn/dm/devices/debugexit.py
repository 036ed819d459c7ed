"""The debug-exit port (acrn-dm ``--debugexit``, QEMU ``isa-debug-exit``) at 0xF4.

A guest write of ``v`` asks the VMM to end the VM with exit status ``(v << 1) | 1``; the status is
always odd, so a test harness can tell a guest's verdict from the VMM's own status 0.  The device
only records the request and reports it through a callback; stopping the VM is the caller's job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from acrn.dm.bus import IoBus

DEBUGEXIT_PORT: Final = 0xF4
DEBUGEXIT_LENGTH: Final = 4


def exit_status(value: int) -> int:
    """The VM exit status a write of ``value`` requests."""
    return (value << 1) | 1


class DebugExit:
    """Records the exit status the guest requested; ``on_exit(status)`` is called on every write."""

    def __init__(self, on_exit: Callable[[int], None] | None = None) -> None:
        self.on_exit = on_exit
        #: The status of the last write, or None if the guest never wrote.
        self.status: int | None = None

    def attach(self, bus: IoBus, port: int = DEBUGEXIT_PORT) -> None:
        """Claim the port range (4 ports, so a 32-bit write is decoded)."""
        bus.register_pio(port, DEBUGEXIT_LENGTH, self)

    def read(self, offset: int, size: int) -> int:
        # Like QEMU's isa-debug-exit, reads carry no information.
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        # Only a write to the base port counts; the other ports exist to decode wide writes.
        if offset != 0:
            return
        self.status = exit_status(value & ((1 << (8 * size)) - 1))
        if self.on_exit is not None:
            self.on_exit(self.status)
