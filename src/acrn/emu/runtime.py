"""The execution runtime: runs the emulated hypervisor's vCPUs on an accelerator.

``acrn.emu.hv`` is pure state; this module is its I/O edge.  It listens to the hypervisor
(:class:`HvListener` callbacks) and:

* on START, creates the accelerator VM (once per hypervisor VM), maps the VM's EPT regions (guest
  RAM the HSM pinned) and runs every vCPU the hypervisor has RUNNING on a thread of its own;
  ACRN starts only the BSP, so that is vCPU 0;
* turns each port-I/O or MMIO exit into an I/O request in the vCPU's slot of the shared ioreq
  page, exactly as ACRN's ``acrn_insert_request`` (``hypervisor/dm/io_req.c``) does, and waits for the
  hypervisor's completion (HC_NOTIFY_REQUEST_FINISH) before resuming the vCPU with the value;
* on PAUSE, kicks every vCPU out of the guest and parks it before the PAUSE hypercall returns;
  on RESET, reloads the (reset) register state at the next START; on DESTROY, stops and joins every
  thread and closes the accelerator VM.

A vCPU that halts with interrupts disabled, triple-faults, fails VM entry or hits an instruction
the accelerator cannot execute stops, and a :class:`StopReport` (which vCPU, why, its registers)
is published; ACRN itself has no such notification, so this is an emulator-only facility that the
device model uses to end ``acrn run``.

The fast path: a device model in the same process may register an in-thread handler with
:meth:`Runtime.set_fast_handler`; requests are then handled on the vCPU thread, walking the same
slot states (PENDING -> PROCESSING -> COMPLETE -> FREE) without the ATTACH/NOTIFY round trip.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

from acrn import uapi
from acrn.arch import CpuState
from acrn.emu.accel.base import (
    Accelerator,
    AccelVcpu,
    AccelVm,
    EmulationFailureExit,
    EntryFailureExit,
    HaltExit,
    KickExit,
    ShutdownExit,
    StartupExit,
    UnknownExit,
    VmExit,
    io_runner,
    multiprocessor_vcpu,
)
from acrn.emu.hv.listener import HvListener
from acrn.emu.hv.state import BSP_VCPU_ID, EINVAL
from acrn.emu.irq import IrqRouter
from acrn.rules import first_entry_state

if TYPE_CHECKING:
    from acrn.emu.hv import HvVm, Hypervisor
    from acrn.emu.hv.io_req import VcpuIoreq

log = logging.getLogger(__name__)

#: How often a vCPU of a polling-mode VM looks at its slot (ACRN spins with PAUSE instead).
POLL_INTERVAL = 20e-6

#: handler(vcpu_id, slot) -> None: handle the request in ``slot`` (fill the value for reads).
FastHandler = Callable[[int, uapi.acrn_io_request], None]


@dataclass
class StopReport:
    """Why a vCPU stopped running the guest for good (until RESET)."""

    vmid: int
    vcpu_id: int
    reason: str  # "halt", "shutdown", "entry-failure", "emulation-failure", "unknown-exit", "error"
    detail: str
    state: dict[str, Any] | None = None
    exit: VmExit | None = None
    time: float = field(default_factory=time.monotonic)
    #: For faults: acrn.regs.validate findings (dicts) for the state SET_VCPU_REGS last landed.
    findings: list[dict[str, Any]] = field(default_factory=list)
    #: For faults: the instructions at RIP (needs capstone).
    disassembly: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rip = f" at rip={self.state['rip']:#x}" if self.state else ""
        return f"vm {self.vmid} vcpu {self.vcpu_id}: {self.reason}{rip}: {self.detail}".rstrip(": ")


@dataclass
class ExitCounts:
    """Exits seen per kind, for ``acrn run -v`` summaries and benchmarks."""

    pio: int = 0
    mmio: int = 0
    halt: int = 0
    kick: int = 0
    other: int = 0


class _Completion:
    """The vCPU's IOREQ event (ACRN's ``VCPU_EVENT_IOREQ``): ``set`` from any thread, ``wait`` consumes it.

    A bare lock used as a binary semaphore: one futex per wake-up, where ``threading.Event`` (a
    Condition, a waiter lock and two Python-level lock round trips) costs several microseconds on
    every I/O exit.  ``clear`` drops a stale signal before a new request is posted.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        try:  # noqa: SIM105 (contextlib.suppress costs more, on every I/O exit)
            self._lock.release()
        except RuntimeError:  # already signalled
            pass

    def clear(self) -> None:
        self._lock.acquire(False)

    def is_set(self) -> bool:
        return not self._lock.locked()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until signalled (consuming the signal); False if ``timeout`` passed first."""
        return self._lock.acquire(True, -1 if timeout is None else timeout)


@dataclass(frozen=True)
class _Mapped:
    """An accelerator memory slot, for reading guest memory in reports."""

    gpa: int
    hpa: int
    size: int


class RunnerState(Enum):
    """Where a vCPU thread is, one state moved by events (as Firecracker's vCPU state machine)."""

    #: Parked; the hypervisor's landed state is loaded at the next START (created, RESET_VM).
    RESET = "reset"
    #: Parked with the accelerator's registers kept (PAUSE_VM).
    PAUSED = "paused"
    #: START after a reset: the thread loads the landed state, then runs.
    LOADING = "loading"
    #: In the guest, or about to enter it.
    RUNNING = "running"
    #: Published a StopReport; parked until RESET_VM.
    STOPPED = "stopped"
    #: DESTROY_VM: the thread ends.
    QUIT = "quit"


class RunnerEvent(Enum):
    START = "start"  # START_VM
    LOADED = "loaded"  # the thread loaded the landed state
    PAUSE = "pause"  # PAUSE_VM
    RESET = "reset"  # RESET_VM
    STOP = "stop"  # the thread published a StopReport
    DESTROY = "destroy"  # DESTROY_VM


_R = RunnerState
#: The runner's transitions; a pair missing keeps the state (e.g. START of a STOPPED vCPU: it
#: waits for RESET_VM, as a vCPU ACRN stopped would; anything but DESTROY leaves QUIT alone).
RUNNER_TRANSITIONS: Final[dict[RunnerEvent, dict[RunnerState, RunnerState]]] = {
    RunnerEvent.START: {_R.RESET: _R.LOADING, _R.PAUSED: _R.RUNNING},
    RunnerEvent.LOADED: {_R.LOADING: _R.RUNNING},
    # Paused before its state was loaded: it must still be loaded at the next START.
    RunnerEvent.PAUSE: {_R.RUNNING: _R.PAUSED, _R.LOADING: _R.RESET},
    RunnerEvent.RESET: {s: _R.RESET for s in RunnerState if s is not _R.QUIT},
    RunnerEvent.STOP: {_R.RUNNING: _R.STOPPED, _R.LOADING: _R.STOPPED, _R.PAUSED: _R.STOPPED},
    RunnerEvent.DESTROY: {s: _R.QUIT for s in RunnerState},
}
#: The states the thread waits in.
_PARKED: Final = frozenset({_R.RESET, _R.PAUSED, _R.STOPPED})


class _VcpuRunner:
    """One vCPU thread.

    Being "in the guest" is holding :attr:`guest` (a bare lock): the thread takes it, checks that
    it may run, runs the accelerator and drops it to handle the exit, so :meth:`park` waits for
    the guest to be left by taking it once, and the hot loop pays two lock operations per exit
    rather than two Condition round trips.  The Condition only parks and wakes the thread.
    """

    def __init__(self, vmrt: VmRuntime, vcpu_id: int, avcpu: AccelVcpu) -> None:
        self.vmrt = vmrt
        self.vcpu_id = vcpu_id
        self.avcpu = avcpu
        self.cond = threading.Condition()
        #: Held by the vCPU thread while it may execute guest code (see the class docstring).
        self.guest = threading.Lock()
        #: Changed only by :meth:`_event`, under ``cond``; the hot loop reads it unlocked.
        self.state = RunnerState.RESET
        self.generation = 0  # bumped by every START: tells exits of an abandoned run apart
        self.exit_generation = 0  # the generation of the run whose exit is being handled
        #: The landed state (and its SET_VCPU_REGS blob) handed over at START, under hv.lock, so
        #: the thread itself never needs that lock to load it (PAUSE/DESTROY hold it while they
        #: wait for this thread).
        self.start_state: CpuState | None = None
        self.start_blob: bytes | None = None
        self.completed = _Completion()
        #: The hypervisor side of this vCPU's slot, bound at the first request after each START.
        self.ioreq: VcpuIoreq | None = None
        self.counts = ExitCounts()
        self.thread = threading.Thread(
            target=self._main, name=f"acrn-vm{vmrt.vmid}-vcpu{vcpu_id}", daemon=True
        )
        #: Runs the guest with every I/O access going to :meth:`_on_io`, whatever the engine.
        self._run_io = io_runner(avcpu, self._on_io)

    @property
    def in_guest(self) -> bool:
        """Whether the thread is (or may be about to be) executing guest code."""
        return self.guest.locked()

    @property
    def running(self) -> bool:
        """Whether the thread may run the guest (START given, no PAUSE, stop or DESTROY since)."""
        return self.state is RunnerState.RUNNING

    def _event(self, event: RunnerEvent) -> RunnerState:
        """Apply ``event`` (caller holds ``cond``) and wake the thread; the new state."""
        self.state = RUNNER_TRANSITIONS[event].get(self.state, self.state)
        self.cond.notify_all()
        return self.state

    # ------------------------------------------------------------------ control (any thread)
    def allow(self) -> None:
        """START: run (after loading the landed state, if reset since)."""
        with self.cond:
            # The generation first: the hot loop reads the state, then the generation, unlocked.
            self.generation += 1
            self._event(RunnerEvent.START)

    def park(self) -> None:
        """PAUSE: stop running guest code; returns once the thread is out of the guest."""
        with self.cond:
            self._event(RunnerEvent.PAUSE)
        self._leave_guest()

    def reset(self) -> None:
        """RESET: parked, and the landed state is loaded at the next START."""
        with self.cond:
            self._event(RunnerEvent.PAUSE)
        self._leave_guest()
        with self.cond:
            self._event(RunnerEvent.RESET)

    def stop_thread(self) -> None:
        """DESTROY: the thread ends."""
        with self.cond:
            self._event(RunnerEvent.DESTROY)
        self.completed.set()
        self.avcpu.kick()

    def _leave_guest(self) -> None:
        self.completed.set()  # abandon a request the device model may never complete
        self.avcpu.kick()
        # The kick is sticky: a thread that is about to enter the guest returns at once.
        if self.guest.acquire(True, 10.0):
            self.guest.release()

    def landed_since_run(self) -> bool:
        """Whether the accelerator's registers are still the loaded state (reset and not run)."""
        return self.state in (RunnerState.RESET, RunnerState.LOADING)

    # ------------------------------------------------------------------ the thread
    def _main(self) -> None:
        try:
            while True:
                with self.cond:
                    self.cond.wait_for(lambda: self.state not in _PARKED)
                    state = self.state
                    start = self.start_state
                if state is RunnerState.QUIT:
                    return
                if state is RunnerState.LOADING:
                    if start is None:  # not handed over (cannot happen through START): ask
                        start = first_entry_state(self.vmrt.landed_state(self.vcpu_id))
                    self.avcpu.set_state(start)
                    mp = multiprocessor_vcpu(self.avcpu)
                    if mp is not None:
                        # ACRN launches only the BSP; APs wait for the guest's INIT/SIPI (``hcall_start_vm``).
                        mp.power_on(wait_for_sipi=self.vcpu_id != BSP_VCPU_ID)
                    with self.cond:
                        self._event(RunnerEvent.LOADED)
                self._run_guest()
        except Exception as e:  # a bug must end the VM with a report, never kill silently
            log.exception("vCPU %d thread failed", self.vcpu_id)
            self.exit_generation = self.generation  # a failure always belongs to this boot
            self._stop("error", f"{type(e).__name__}: {e}", None)

    def _run_guest(self) -> None:
        """Run the guest and handle its exits until PAUSE, RESET, DESTROY or a stop."""
        guest = self.guest
        run = self._run_io
        running = RunnerState.RUNNING
        while True:
            guest.acquire()
            try:
                if self.state is not running:
                    return
                generation = self.generation
                self.exit_generation = generation
                ex = run()
            finally:
                guest.release()
            if ex is None:  # an I/O access was abandoned (parked meanwhile): look at the flags again
                continue
            if generation != self.generation or self.state is not running:
                continue  # an exit of a run that PAUSE, RESET or a new START abandoned
            self._handle(ex)

    def _on_io(self, is_mmio: bool, address: int, size: int, is_write: bool, value: int) -> int | None:
        """The one entry of a guest I/O access, whichever engine met it (``io_runner``).

        Called in the guest (``guest`` held), on the vCPU thread; handles the request through
        the ioreq path out of it (PAUSE waits for the guest to be left while holding ``hv.lock``,
        which that path takes), then takes ``guest`` again.  Returns the read value (anything for a
        write), or None when the vCPU was parked meanwhile and the access is abandoned.  A park
        kicks the vCPU, so an engine given a value runs no further guest code before the thread
        looks at its flags.
        """
        self.guest.release()
        try:
            if is_mmio:
                self.counts.mmio += 1
                return self.vmrt.io_request(self, uapi.ACRN_IOREQ_TYPE_MMIO, address, size, is_write, value)
            self.counts.pio += 1
            return self.vmrt.io_request(self, uapi.ACRN_IOREQ_TYPE_PORTIO, address, size, is_write, value)
        finally:
            self.guest.acquire()

    def _handle(self, ex: VmExit) -> None:
        """Every exit that is not I/O (those go to :meth:`_on_io`)."""
        if isinstance(ex, KickExit):
            self.counts.kick += 1
        elif isinstance(ex, StartupExit):
            self.vmrt.ap_started(self.vcpu_id)
        elif isinstance(ex, HaltExit):
            self.counts.halt += 1
            if not ex.interrupts_enabled:
                self._stop("halt", "HLT with interrupts disabled", ex)
            else:
                # No interrupt source can wake it yet: it sleeps until PAUSE/RESET.
                self._stop("halt", "HLT with interrupts enabled and no interrupt pending", ex)
        elif isinstance(ex, ShutdownExit):
            self.counts.other += 1
            self._stop("shutdown", ex.detail or "triple fault", ex)
        elif isinstance(ex, EntryFailureExit):
            self.counts.other += 1
            self._stop("entry-failure", f"reason {ex.reason:#x} {ex.detail}".strip(), ex)
        elif isinstance(ex, EmulationFailureExit):
            self.counts.other += 1
            insn = f" bytes {ex.insn_bytes.hex(' ')}" if ex.insn_bytes else ""
            self._stop("emulation-failure", f"suberror {ex.suberror} {ex.detail}{insn}".strip(), ex)
        elif isinstance(ex, UnknownExit):
            self.counts.other += 1
            self._stop("unknown-exit", f"code {ex.code} {ex.detail}".strip(), ex)
        else:
            self.counts.other += 1
            self._stop("unknown-exit", repr(ex), ex)

    def _stop(self, reason: str, detail: str, ex: VmExit | None) -> None:
        state: dict[str, Any] | None
        try:
            state = self.avcpu.get_state().to_dict()
        except Exception:
            state = None
        with self.cond:
            if self.exit_generation != self.generation:
                # RESET and a new START overtook this exit (from the previous boot): drop it,
                # or the new boot would be reported stopped and never run.
                return
            self._event(RunnerEvent.STOP)
        report = StopReport(self.vmrt.vmid, self.vcpu_id, reason, detail, state, ex)
        if reason != "halt":
            self.vmrt.explain(report)
        self.vmrt.runtime.publish(report)


class VmRuntime:
    """The execution side of one hypervisor VM."""

    def __init__(self, runtime: Runtime, vm: HvVm) -> None:
        self.runtime = runtime
        self.hv = runtime.hv
        self.vmid: int = vm.vmid
        accelerator = runtime.accelerator
        _apply_pit_owner(accelerator, self.hv.platform.pit_owner)
        self.accel_vm: AccelVm = accelerator.create_vm()
        #: The hypervisor's VM object: the same one from CREATE_VM to DESTROY (read without hv.lock
        #: on the I/O path, for its fixed guest flags only).
        self.hv_vm = vm
        self.irq = IrqRouter(self.accel_vm)
        self.irq.replay(dict(vm.ioapic_lines), dict(vm.pic_lines))
        self.mapped: dict[tuple[int, int], int] = {}
        self.vcpus: dict[int, _VcpuRunner] = {}

    @property
    def polling(self) -> bool:
        """Whether the VM completes I/O requests by polling (GUEST_FLAG_IO_COMPLETION_POLLING)."""
        vm = self.hv.vm(self.vmid)
        return bool(vm is not None and vm.is_polling_ioreq)

    def accel_states(self) -> dict[int, CpuState]:
        """Every created vCPU's registers as the accelerator holds them."""
        return {vid: runner.avcpu.get_state() for vid, runner in self.vcpus.items()}

    def live_state(self, vcpu_id: int) -> CpuState | None:
        """The registers a vCPU holds in the accelerator, once it has run since its last load
        (None before: the hypervisor's landed state is then the truth)."""
        runner = self.vcpus.get(vcpu_id)
        if runner is None or runner.landed_since_run():
            return None
        return runner.avcpu.get_state()

    def landed_state(self, vcpu_id: int) -> CpuState:
        return self.hv.vcpu_state(self.vmid, vcpu_id)

    def explain(self, report: StopReport) -> None:
        """Add the validator's findings and the code at RIP to a fault report (best effort)."""
        from acrn.emu.guest_inspect import code_at_rip, disassemble, region_reader
        from acrn.regs.model import VcpuRegs
        from acrn.regs.validate import validate

        try:
            # No hv.lock here: the vCPU thread may be stopping while PAUSE/DESTROY hold it.
            runner = self.vcpus.get(report.vcpu_id)
            blob = runner.start_blob if runner is not None else None
            regions = [_Mapped(gpa, hpa, size) for (gpa, size), hpa in list(self.mapped.items())]
            if blob is not None:
                findings = validate(VcpuRegs.from_bytes(blob), level="arch", platform=self.hv.platform)
                report.findings = [f.to_dict() for f in findings]
            if report.state is not None:
                st = CpuState.from_dict(report.state)
                code = None
                if isinstance(report.exit, EmulationFailureExit) and report.exit.insn_bytes:
                    code = report.exit.insn_bytes
                if code is None:
                    code = code_at_rip(st, region_reader(regions))
                if code:
                    report.disassembly = disassemble(code, st.cs.base + st.rip, st)
        except Exception:  # a report must never fail the stop itself
            log.debug("could not explain stop", exc_info=True)

    def sync_memory(self, vm: HvVm) -> None:
        """Make the accelerator's slots equal the hypervisor's EPT regions."""
        wanted = {(r.gpa, r.size): r for r in vm.memory_regions}
        for key in [k for k in self.mapped if k not in wanted]:
            self.accel_vm.unmap_memory(*key)
            del self.mapped[key]
        for key, r in wanted.items():
            if key not in self.mapped or self.mapped[key] != r.hpa:
                if key in self.mapped:
                    self.accel_vm.unmap_memory(*key)
                writable = bool(r.prot & uapi.ACRN_MEM_ACCESS_WRITE)
                self.accel_vm.map_memory(r.gpa, r.size, r.hpa, writable=writable)
                self.mapped[key] = r.hpa

    def start(self, vm: HvVm) -> None:
        from acrn.emu.hv import VcpuState

        self.sync_memory(vm)
        # With interrupt controllers the APs exist from START on and wait, in the accelerator, for
        # the guest's INIT/SIPI (ACRN: VCPU_INIT until then); without them only the BSP runs.
        smp = self.irq.delivers
        for vcpu in vm.vcpus:
            if vcpu.state != VcpuState.RUNNING and not (smp and vcpu.state == VcpuState.INIT):
                continue
            runner = self.vcpus.get(vcpu.vcpu_id)
            if runner is None:
                avcpu = self.accel_vm.create_vcpu(vcpu.vcpu_id, vcpu.lapic_id)
                runner = _VcpuRunner(self, vcpu.vcpu_id, avcpu)
                self.vcpus[vcpu.vcpu_id] = runner
                runner.thread.start()
            with runner.cond:
                runner.start_state = first_entry_state(vcpu.regs)  # CR4 as init_vmcs applies it
                runner.start_blob = vcpu.set_regs
                runner.ioreq = None  # the buffer may have been set again while the VM was CREATED
            runner.allow()

    def ap_started(self, vcpu_id: int) -> None:
        """The guest started an AP with INIT/SIPI: the hypervisor's VCPU_INIT -> VCPU_RUNNING."""
        self.hv.vcpu_started(self.vmid, vcpu_id)

    def pause(self) -> None:
        for r in self.vcpus.values():
            r.park()

    def reset(self) -> None:
        for r in self.vcpus.values():
            r.reset()
        self.irq.reset()  # ACRN resets the vIOAPIC/vPIC (and each vLAPIC, at the next power_on)

    def destroy(self) -> None:
        for r in self.vcpus.values():
            r.stop_thread()
        # DESTROY runs under hv.lock; a vCPU thread may be waiting for that lock (an ioreq in
        # flight), so wait for the threads with the lock released, as a condition wait does.
        others = [r.thread for r in self.vcpus.values() if r.thread is not threading.current_thread()]
        waiter = threading.Condition(self.hv.lock)
        deadline = time.monotonic() + 30.0
        with waiter:
            while any(t.is_alive() for t in others) and time.monotonic() < deadline:
                waiter.wait(0.005)
        for r in self.vcpus.values():
            r.avcpu.close()
        self.vcpus.clear()
        self.accel_vm.close()

    def request_completed(self, vcpu_id: int) -> None:
        r = self.vcpus.get(vcpu_id)
        if r is not None:
            r.completed.set()

    def exit_counts(self) -> ExitCounts:
        total = ExitCounts()
        for r in self.vcpus.values():
            for f in dataclasses.fields(ExitCounts):
                setattr(total, f.name, getattr(total, f.name) + getattr(r.counts, f.name))
        return total

    # ------------------------------------------------------------------ the ioreq path (vCPU thread)
    def io_request(
        self, runner: _VcpuRunner, req_type: int, address: int, size: int, is_write: bool, value: int
    ) -> int | None:
        """Post one request in the vCPU's slot and wait for its completion; the read value or None."""
        vid = runner.vcpu_id
        completed = runner.completed
        completed.clear()
        ioreq = runner.ioreq
        if ioreq is None:
            # Bound at the first request after each START; without an ioreq page there is none,
            # and the request fails as acrn_insert_request does.
            ioreq = runner.ioreq = self.hv.vcpu_ioreq(self.vmid, vid)
        with self.hv.lock:
            if runner.state is not RunnerState.RUNNING:
                return None  # paused meanwhile: the instruction is not completed (it re-runs after reset)
            rc = ioreq.insert(req_type, is_write, address, size, value) if ioreq is not None else EINVAL
        if rc < 0 or ioreq is None:
            runner._stop("error", f"ioreq slot {vid} not free (acrn_insert_request returned {rc})", None)
            return None
        # The upcall has run the HSM dispatcher on this thread: the request is completed in the
        # kernel (CF8, ioeventfd, clearing), waiting for the default client (PROCESSING) or, with
        # no client, still PENDING.  The fast path is the default client's work done right here;
        # its handler ends with NOTIFY_REQUEST_FINISH like any client, so every slot state and
        # every in-kernel rule is the same as on the faithful path (``drivers/virt/acrn/ioreq.c:
        # acrn_ioreq_dispatch``).
        slot = ioreq.slot
        fast = self.runtime.fast_handlers.get(self.vmid)
        if (
            fast is not None
            and slot.processed == uapi.ACRN_IOREQ_STATE_PROCESSING
            and slot.kernel_handled == 0
        ):
            fast(vid, slot)
        if ioreq.polling:
            # IO_COMPLETION_POLLING: no notify hypercall; the hypervisor polls the slot
            # (``ioreq_complete_request``).
            while runner.running and slot.processed != uapi.ACRN_IOREQ_STATE_COMPLETE:
                completed.wait(POLL_INTERVAL)
        else:
            completed.wait()
        if not runner.running:
            return None
        return ioreq.complete()


def _install_kick_handler() -> None:
    """KVM's kick interrupts KVM_RUN with a signal whose handler must be set from the main thread.

    Without it a kick only sets ``immediate_exit``, which a vCPU spinning inside the guest never
    sees, so PAUSE could not stop it; hence the handler is installed as early as possible.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    from acrn.emu.accel import kvm

    kvm.install_kick_handler()


def _apply_pit_owner(accelerator: Accelerator, owner: str) -> None:
    """Give the KVM VM an in-kernel PIT only when the platform says the hypervisor owns it.

    The KVM accelerator may be wrapped (the fallback and hybrid accelerators keep it as
    ``primary``); the soft accelerator has no PIT, so there the ports always reach the device model.
    """
    from acrn.emu.accel.kvm import KvmAccelerator

    for acc in (accelerator, getattr(accelerator, "primary", None)):
        if isinstance(acc, KvmAccelerator):
            acc.pit = owner == "hypervisor-kvm"


class Runtime(HvListener):
    """Attach to a :class:`~acrn.emu.hv.Hypervisor` and execute its VMs on an accelerator."""

    def __init__(self, hv: Hypervisor, accel: str | Accelerator = "auto") -> None:
        from acrn.emu.accel import get_accelerator

        self.hv = hv
        self._accel_spec = accel
        self._accelerator: Accelerator | None = accel if not isinstance(accel, str) else None
        self.vms: dict[int, VmRuntime] = {}
        self.fast_handlers: dict[int, FastHandler] = {}
        self._stops: list[StopReport] = []
        self._stop_cond = threading.Condition()
        self._stop_callbacks: list[Callable[[StopReport], None]] = []
        self._get_accelerator = get_accelerator
        _install_kick_handler()
        hv.add_listener(self)

    @property
    def accelerator(self) -> Accelerator:
        if self._accelerator is None:
            assert isinstance(self._accel_spec, str)
            acc = self._get_accelerator(self._accel_spec)
            from acrn.emu.accel.kvm import KvmAccelerator

            if isinstance(acc, KvmAccelerator):
                # Always the in-kernel irqchip: SET_IRQLINE/INJECT_MSI and INIT/SIPI need it, and
                # the KVM accelerator reports "cli; hlt" through its halt probe instead of HLT exits.
                acc.irqchip = True
            self._accelerator = acc
        return self._accelerator

    @property
    def accel_name(self) -> str:
        """The accelerator asked for (``auto`` until a VM starts and one is chosen)."""
        if self._accelerator is not None:
            return self._accelerator.name
        return self._accel_spec if isinstance(self._accel_spec, str) else self._accel_spec.name

    def set_accelerator(self, accel: str | Accelerator) -> None:
        """Choose the accelerator for VMs started from now on."""
        self._accel_spec = accel
        self._accelerator = accel if not isinstance(accel, str) else None

    # ------------------------------------------------------------------ hv listener
    def vm_started(self, vm: HvVm) -> None:
        vmrt = self.vms.get(vm.vmid)
        if vmrt is None:
            vmrt = self.vms[vm.vmid] = VmRuntime(self, vm)
        vmrt.start(vm)

    def vm_paused(self, vm: HvVm) -> None:
        if vm.vmid in self.vms:
            self.vms[vm.vmid].pause()

    def vm_reset(self, vm: HvVm) -> None:
        if vm.vmid in self.vms:
            self.vms[vm.vmid].reset()

    def vm_destroyed(self, vm: HvVm) -> None:
        self.fast_handlers.pop(vm.vmid, None)
        vmrt = self.vms.pop(vm.vmid, None)
        if vmrt is not None:
            vmrt.destroy()

    def memory_changed(self, vm: HvVm) -> None:
        vmrt = self.vms.get(vm.vmid)
        if vmrt is not None:
            vmrt.sync_memory(vm)

    def request_completed(self, vm: HvVm, vcpu_id: int) -> None:
        vmrt = self.vms.get(vm.vmid)
        if vmrt is not None:
            vmrt.request_completed(vcpu_id)

    def irqline(self, vm: HvVm, gsi: int, op: int) -> None:
        """SET_IRQLINE accepted: drive the line (before the first START the level is replayed)."""
        vmrt = self.vms.get(vm.vmid)
        if vmrt is not None:
            vmrt.irq.irqline(gsi, op)

    def msi(self, vm: HvVm, addr: int, data: int) -> None:
        """INJECT_MSI accepted: deliver it to the local APICs (lost before the first START)."""
        vmrt = self.vms.get(vm.vmid)
        if vmrt is not None:
            vmrt.irq.msi(addr, data)

    # ------------------------------------------------------------------ stop reports
    def publish(self, report: StopReport) -> None:
        log.info("%s", report.summary())
        with self._stop_cond:
            self._stops.append(report)
            self._stop_cond.notify_all()
        for cb in list(self._stop_callbacks):
            cb(report)

    def on_stop(self, callback: Callable[[StopReport], None]) -> None:
        """Call ``callback(report)`` (on the vCPU thread) whenever a vCPU stops."""
        self._stop_callbacks.append(callback)

    def remove_stop_callback(self, callback: Callable[[StopReport], None]) -> None:
        if callback in self._stop_callbacks:
            self._stop_callbacks.remove(callback)

    def wait_stop(self, vmid: int, timeout: float | None = None) -> StopReport | None:
        """Block until a vCPU of ``vmid`` stops (or the timeout passes); consume the report."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._stop_cond:
            while True:
                for i, r in enumerate(self._stops):
                    if r.vmid == vmid:
                        return self._stops.pop(i)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._stop_cond.wait(remaining)

    def set_fast_handler(self, vmid: int, handler: FastHandler | None) -> None:
        """Handle ``vmid``'s requests on the vCPU threads (in-process device model); None undoes it."""
        if handler is None:
            self.fast_handlers.pop(vmid, None)
        else:
            self.fast_handlers[vmid] = handler

    def close(self) -> None:
        for vmid in list(self.vms):
            self.vms.pop(vmid).destroy()
        self.hv.remove_listener(self)


__all__ = ["ExitCounts", "Runtime", "StopReport", "VmRuntime"]
