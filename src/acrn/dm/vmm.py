"""One VM driven end to end through the HSM interface, as acrn-dm drives it.

:class:`VmSession` is the device model's main sequence (devicemodel/core/main.c: main, vm_loop):
open the HSM, CREATE_VM, SET_MEMSEG for guest RAM, copy images, SET_VCPU_REGS for the BSP,
CREATE_IOREQ_CLIENT, START_VM, run the ioreq loop, and on the way out PAUSE_VM,
DESTROY_IOREQ_CLIENT (which ends the loop), DESTROY_VM and close.  Every step is an ioctl, so
``acrn -v`` shows the whole conversation.

How a run ends (:class:`RunResult.reason` and the exit status ``acrn run`` returns):

=================  ===========  ==================================================================
reason             status       when
=================  ===========  ==================================================================
``halt``           0            a vCPU executed HLT with interrupts disabled
``debugexit``      (v<<1)|1     the guest wrote v to the debug-exit port (0xF4)
``shutdown``       3            triple fault
``entry-failure``  3            VM entry refused the register state
``emulation-...``  3            the accelerator could not execute an instruction
``timeout``        124          ``timeout`` seconds passed (as timeout(1))
``poweroff``       0            ACPI S5 through the PM1 control port (:mod:`acrn.dm.devices.acpi_pm`)
``reset``          0            a guest reset with ``no_reboot`` (else acrn-dm's reset sequence runs)
``marker``         0            a caller's :meth:`VmSession.request_stop` (e.g. a console marker)
``quit``           0            ``acrn run``'s Ctrl-A x (a caller's request_stop, as the three below)
``signal``         128+N        ``acrn run`` got SIGINT, SIGTERM or SIGHUP (N)
``stdout-closed``  141          ``acrn run``'s standard output was closed (128 + SIGPIPE)
``stdout-error``   1            writing the console to standard output failed otherwise
=================  ===========  ==================================================================

Stops other than debug-exit and timeout are known only to the emulator (the real HSM has no such
notification); against ``/dev/acrn_hsm`` a run ends on debug-exit or timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from acrn import uapi
from acrn.dm.bus import IoBus
from acrn.dm.devices.debugexit import DebugExit
from acrn.dm.devices.i8254 import I8254, PIT_GSI
from acrn.dm.devices.pci_host import PciHostBridge
from acrn.dm.devices.uart16550 import COM1_IRQ, Uart16550
from acrn.dm.ioreq_loop import IoreqLoop, batch_scheduling
from acrn.dm.pci import PciBus
from acrn.errors import HsmError
from acrn.hsm import Hsm, Vm
from acrn.regs.model import VcpuRegs
from acrn.user_memory import HostMemory

if TYPE_CHECKING:
    from acrn.device import Device
    from acrn.emu.control import EmulatorControl, StopReport

log = logging.getLogger(__name__)

STATUS_FAULT = 3
STATUS_TIMEOUT = 124
FAULT_REASONS = ("shutdown", "entry-failure", "emulation-failure", "unknown-exit", "error")


@dataclass
class RunResult:
    """How a VM run ended."""

    reason: str
    status: int
    detail: str = ""
    seconds: float = 0.0
    output: bytes = b""
    states: dict[int, dict[str, Any]] = field(default_factory=dict)
    exits: dict[str, int] = field(default_factory=dict)
    report: StopReport | None = None

    def summary(self) -> str:
        exits = ", ".join(f"{k} {v}" for k, v in self.exits.items() if v)
        return (
            f"VM ended: {self.reason} (status {self.status}) after {self.seconds:.3f} s"
            + (f"; {self.detail}" if self.detail else "")
            + (f"; exits: {exits}" if exits else "")
        )


class VmSession:
    """Build, run and tear down one VM; usable as a context manager."""

    def __init__(
        self,
        *,
        name: str = "pyacrn",
        mem_size: int = 2 << 20,
        device: str | Device = "auto",
        accel: str = "auto",
        console: Callable[[bytes], None] | None = None,
        fast_path: bool = False,
        cpu_affinity: int = 0,
        pit_owner: str | None = None,
    ) -> None:
        if pit_owner is not None and pit_owner not in ("hypervisor-kvm", "device-model"):
            raise ValueError(f"pit_owner {pit_owner!r}: must be hypervisor-kvm or device-model")
        self.hsm = Hsm.open(device) if isinstance(device, str) else Hsm(device)
        self.accel = accel
        #: The emulator's control port when the HSM is the emulator in this process, else None.
        self.control: EmulatorControl | None = self.hsm.device.control
        if self.control is not None and accel != self.control.accel_name:
            self.control.set_accelerator(accel)
        self.output = bytearray()
        self._console = console
        self.bus = IoBus()
        self.uart = Uart16550(output=self._on_output, irq=self._on_uart_irq)
        self.uart.attach(self.bus)
        self._stop_event = threading.Event()
        self._debugexit_status: int | None = None
        self.debugexit = DebugExit(on_exit=self._on_debugexit)
        self.debugexit.attach(self.bus)
        # The PIT is the device model's wherever the hypervisor has none: on ACRN itself (a real
        # HSM) and on an emulator whose platform says so (docs/differences.md, "The PIT").
        # ``pit_owner`` sets the emulator's platform option for the VMs created from now on.
        if self.control is not None and pit_owner is not None:
            self.control.pit_owner = pit_owner
        owner = self.control.pit_owner if self.control is not None else "device-model"
        self.pit: I8254 | None = None
        if owner == "device-model":
            self.pit = I8254(irq=self._on_pit_irq)
            self.pit.attach(self.bus)
        # PCICFG requests (the kernel's CF8/CFC combiner, drivers/virt/acrn/ioreq.c:
        # handle_cf8cfc) go to bus 0 with the host bridge.
        self.pci = PciBus()
        self.hostbridge = PciHostBridge()
        self.hostbridge.attach(self.pci)
        self.fast_path = fast_path and self.control is not None
        #: The pCPU bitmap CREATE_VM asked for (0: the VM configuration's).
        self.cpu_affinity = cpu_affinity
        self.vm: Vm = self.hsm.create_vm(name, cpu_affinity=cpu_affinity)
        self.ram: HostMemory = self.vm.map_ram(0, mem_size)
        self.mem_size = self.ram.size
        self._loop: IoreqLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._started = False
        self._epoch = 0.0  # monotonic time of the latest START_VM
        self._closed = False
        #: Guest RAM regions as (gpa, memory): lowmem at 0, then any :meth:`map_ram` adds (acrn-dm's
        #: highmem at 4 GiB, the firmware region below 4 GiB).
        self.regions: list[tuple[int, HostMemory]] = [(0, self.ram)]
        self._requested: RunResult | None = None  # a stop asked for by a device (power-off, reset)
        self._reset_requested = False
        #: With ``no_reboot`` a guest reset ends the run (QEMU's -no-reboot); otherwise ``reload``
        #: (re-run the loader, return the BSP registers) drives acrn-dm's reset sequence.
        self.no_reboot = False
        self.reload: Callable[[], VcpuRegs] | None = None
        self.resets = 0
        #: Validate every SET_VCPU_REGS state at level ``abi`` before the ioctl (``acrn run --strict``).
        self.strict_regs = False
        #: Set by a caller that paused the VM itself (``acrn run``'s Ctrl-A p): ACRN cannot resume it.
        self.paused_by_user = False
        #: The fallback accelerator's counters when the caller installed one (``acrn run``).
        self.fallback_stats: Any = None

    # ------------------------------------------------------------------ building
    def load(self, gpa: int, data: bytes) -> None:
        """Copy an image into guest RAM at ``gpa`` (within one RAM region)."""
        for base, mem in self.regions:
            if base <= gpa and gpa + len(data) <= base + mem.size:
                mem.write(gpa - base, data)
                return
        raise ValueError(
            f"image of {len(data)} bytes at GPA {gpa:#x} does not fit in {self.mem_size:#x} bytes of RAM"
        )

    write = load  # the loaders' GuestMemory protocol

    def read(self, gpa: int, size: int) -> bytes:
        """Read guest RAM (within one region)."""
        for base, mem in self.regions:
            if base <= gpa and gpa + size <= base + mem.size:
                return mem.read(gpa - base, size)
        raise ValueError(f"[{gpa:#x}, {gpa + size:#x}) is not guest RAM")

    def map_ram(self, gpa: int, size: int) -> HostMemory:
        """SET_MEMSEG one more RAM region (acrn-dm: highmem at 4 GiB, the BIOS region below it)."""
        mem = self.vm.map_ram(gpa, size)
        self.regions.append((gpa, mem))
        return mem

    def request_stop(self, reason: str, status: int, detail: str = "") -> None:
        """End the run (any thread; e.g. a device: ACPI power-off, a reset with ``no_reboot``)."""
        if self._requested is None:
            self._requested = RunResult(reason, status, detail)
        self._stop_event.set()

    def request_reset(self) -> None:
        """A guest system reset (i8042 0xFE, 0xCF9): acrn-dm's reset sequence, or the end of the run."""
        if self.no_reboot or self.reload is None:
            why = "--no-reboot" if self.no_reboot else "no loader to re-run"
            self.request_stop("reset", 0, f"guest reset ({why})")
            return
        # acrn-dm holds NOTIFY back from here on (the request that asked for the reset included):
        # CLEAR_VM_IOREQ and RESET_VM complete what is outstanding (devicemodel/core/main.c: vm_system_reset;
        # drivers/virt/acrn/ioreq.c: acrn_ioreq_request_clear).
        if self._loop is not None:
            self._loop.notify_postponed = True
        self._reset_requested = True
        self._stop_event.set()

    def _guest_reset(self) -> None:
        """acrn-dm's ``vm_system_reset``: PAUSE, CLEAR_VM_IOREQ, RESET_VM, reload, SET_VCPU_REGS, START."""
        assert self.reload is not None
        self.vm.pause()
        self.vm.clear_vm_ioreq()
        self.vm.reset()
        regs = self.reload()
        self.vm.set_vcpu_regs(regs)
        self.resets += 1
        if self._loop is not None:
            self._loop.notify_postponed = False
        self._start()

    def set_regs(self, regs: VcpuRegs, *, strict: bool | None = None) -> None:
        """SET_VCPU_REGS for vCPU 0's state; ``strict`` (default :attr:`strict_regs`) validates first."""
        self.vm.set_vcpu_regs(regs, strict=self.strict_regs if strict is None else strict)

    # ------------------------------------------------------------------ running
    def _on_output(self, data: bytes) -> None:
        self.output += data
        if self._console is not None:
            self._console(data)

    def _on_uart_irq(self, level: bool) -> None:
        """The UART's interrupt output is wired to GSI 4 (COM1), as acrn-dm's ``vm_set_gsi_irq``."""
        vm = getattr(self, "vm", None)
        if vm is None:
            return
        try:
            vm.set_irqline(COM1_IRQ, uapi.GSI_SET_HIGH if level else uapi.GSI_SET_LOW)
        except HsmError as e:  # e.g. the VM is being destroyed: the level no longer matters
            log.debug("UART interrupt line: %s", e)

    def _on_pit_irq(self) -> None:
        """Channel 0's output edge: a pulse on GSI 2, as acrn-dm's ``vpit_timer_handler``."""
        vm = getattr(self, "vm", None)
        if vm is None:
            return
        try:
            vm.set_irqline(PIT_GSI, uapi.GSI_RAISING_PULSE)
        except HsmError as e:  # e.g. the VM is being destroyed
            log.debug("PIT interrupt line: %s", e)

    def _on_debugexit(self, status: int) -> None:
        self._debugexit_status = status
        self._stop_event.set()

    def _on_stop(self, report: StopReport) -> None:
        # A report from before the latest START (a vCPU halting while a guest reset was already
        # under way) belongs to the previous boot and must not end this one.
        if report.vmid == self.vm.vmid and report.time >= self._epoch:
            self._stop_event.set()

    def _start(self) -> None:
        """START_VM, remembering when, so that stop reports of an earlier boot are told apart."""
        self._epoch = time.monotonic()
        self.vm.start()

    def _current_report(self) -> StopReport | None:
        """The first stop report of the current boot (older ones are dropped)."""
        if self.control is None:
            return None
        while True:
            report = self.control.wait_stop(self.vm.vmid, timeout=0)
            if report is None or report.time >= self._epoch:
                return report

    def run(self, timeout: float | None = None) -> RunResult:
        """START_VM and serve I/O until the guest stops, exits through the debug port or times out."""
        t0 = time.monotonic()
        if self._requested is None:
            # A stop asked for before the run (a signal while the caller set up) still ends it.
            self._stop_event.clear()
        self._debugexit_status = None
        if self.control is not None:
            self.control.remove_stop_callback(self._on_stop)
            self.control.on_stop(self._on_stop)
        if self.fast_path:
            assert self.control is not None
            if self._loop is None:
                # The default client exists as on the faithful path (the HSM dispatches to it);
                # only ATTACH is replaced: its work runs on the vCPU thread, ending with NOTIFY.
                self.vm.create_ioreq_client()
                self._loop = IoreqLoop(self.vm, self.bus, self.pci)
            loop = self._loop

            # The loop's own emulate-and-NOTIFY step, NOTIFY held back around a guest reset.
            self.control.set_fast_handler(self.vm.vmid, loop.complete)
            self._start()
        else:
            # acrn-dm's vm_loop thread: CREATE_IOREQ_CLIENT, START_VM, then ATTACH (devicemodel/core/main.c:
            # vm_loop, add_cpu); the thread starts after START so that its first ATTACH follows it too.  The
            # client outlives guest resets, as in acrn-dm.
            new_thread = self._loop_thread is None
            if new_thread:
                self.vm.create_ioreq_client()
                self._loop = IoreqLoop(self.vm, self.bus, self.pci)
                self._loop_thread = threading.Thread(
                    target=self._serve, args=(self._loop,), name="acrn-dm-ioreq", daemon=True
                )
            self._start()
            if new_thread:
                assert self._loop_thread is not None
                self._loop_thread.start()
        self._started = True
        if self.pit is not None:
            self.pit.start()
        deadline = None if timeout is None else t0 + timeout
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
            finished = self._stop_event.wait(remaining)
            if finished and self._reset_requested and self._requested is None:
                self._reset_requested = False
                self._stop_event.clear()
                self._guest_reset()
                continue
            break
        seconds = time.monotonic() - t0
        report = self._current_report()
        if self._debugexit_status is not None:
            result = RunResult("debugexit", self._debugexit_status, f"guest wrote to port {0xF4:#x}")
        elif self._requested is not None:
            result = self._requested
            self._requested = None
        elif not finished:
            result = RunResult("timeout", STATUS_TIMEOUT, f"no stop within {timeout} s")
        elif report is not None:
            status = 0 if report.reason == "halt" else STATUS_FAULT
            result = RunResult(report.reason, status, report.detail, report=report)
        else:
            result = RunResult("error", STATUS_FAULT, "stopped without a report")
        result.seconds = seconds
        self._pause_and_collect(result)
        return result

    @staticmethod
    def _serve(loop: IoreqLoop) -> None:
        """The ioreq thread: SCHED_BATCH (:func:`acrn.dm.ioreq_loop.batch_scheduling`), then the loop."""
        batch_scheduling()
        loop.run()

    def _pause_and_collect(self, result: RunResult) -> None:
        self.vm.pause()
        if self.control is not None:
            result.states.update(self.control.vcpu_states(self.vm.vmid))
            result.exits = self.control.exit_counts(self.vm.vmid)
        result.output = bytes(self.output)

    def close(self) -> None:
        """Tear down as acrn-dm does (devicemodel/core/main.c: main, after vm_loop): PAUSE,
        DESTROY_IOREQ_CLIENT, join the loop,
        PAUSE again, DESTROY_VM, close."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._started:
                self.vm.pause()
                if self._loop_thread is not None:
                    # The loop may wait for a reset the run ended before (a stop or a timeout
                    # right after the guest asked for it): stop() releases that wait, and
                    # DESTROY_IOREQ_CLIENT a blocked ATTACH.
                    if self._loop is not None:
                        self._loop.stop()
                    self.vm.destroy_ioreq_client()
                    self._loop_thread.join(timeout=10)
                self.vm.pause()  # acrn-dm's vm_pause before vm_destroy (a no-op on a paused VM)
                self.vm.destroy()
        finally:
            if self.pit is not None:
                self.pit.close()
            if self.control is not None:
                self.control.remove_stop_callback(self._on_stop)
            self.hsm.close()

    def __enter__(self) -> VmSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
