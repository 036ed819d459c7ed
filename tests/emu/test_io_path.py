"""One I/O path per layer, and what each layer's shortcut must keep (no timings here).

* KVM's one loop: ``run_io(handler)`` against ``run()`` (the loop with no handler): the same
  accesses in the same order, the same values loaded into registers, the same final state,
  string I/O and MMIO included, and an access handed back (handler None) completing as after
  ``run``; a kick made while the handler runs;
* every engine gets the same handler shape (``io_runner``, ``run_with_io``);
* ``VcpuIoreq`` is the one insert/complete: it fails as ACRN does without a page and follows its
  vmid to a VM created again;
* the NOTIFY hypercall's inline state rule against ``check_state`` for every state, and one path
  whatever the bits above the dispatch byte;
* ATTACH's bare-lock wake-up: every waiter is woken, as by the kernel's wake_up;
* on a guest, fast and faithful paths count the same exits, leave the slot FREE, put IN results
  in RAX, and the fast path still works with ``acrn.trace`` on (the traced NOTIFY ioctl); the
  ioreq thread runs in SCHED_BATCH, vCPU threads do not.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator

import pytest

from acrn import uapi
from acrn.device import EmulatedDevice
from acrn.dm.vmm import VmSession
from acrn.emu.accel import kvm
from acrn.emu.accel.base import (
    HaltExit,
    IoLoopVcpu,
    KickExit,
    MmioExit,
    PioExit,
    VmExit,
    io_loop_vcpu,
    io_runner,
    run_with_io,
)
from acrn.emu.hv.hypervisor import _NOTIFY_ALLOWED, _NOTIFY_RULE
from acrn.emu.hv.state import EINVAL, ENOTTY, VmState, check_state
from acrn.emu.machine import Machine
from acrn.guests import GUESTS

from . import accel_guests as g
from .hsm_support import Env, UserMem, env_fixture

env = pytest.fixture(env_fixture)
FREE, PENDING = uapi.ACRN_IOREQ_STATE_FREE, uapi.ACRN_IOREQ_STATE_PENDING
COMPLETE = uapi.ACRN_IOREQ_STATE_COMPLETE
_HALT = HaltExit(False)


# ---- run_io against run ------------------------------------------------------------------------
def _read_value(is_mmio: bool, address: int, size: int) -> int:
    """A deterministic answer for every read, different per address."""
    return (address * 0x9E3779B1 + size) & ((1 << (8 * size)) - 1)


def _by_run(vcpu: kvm.KvmVcpu) -> tuple[list[tuple[bool, int, int, bool, int]], VmExit]:
    seen = []
    while True:
        ex = vcpu.run()
        if isinstance(ex, PioExit | MmioExit):
            mmio = isinstance(ex, MmioExit)
            address = ex.address if isinstance(ex, MmioExit) else ex.port
            seen.append((mmio, address, ex.size, ex.is_write, ex.value))
            if not ex.is_write:
                vcpu.complete_read(_read_value(mmio, address, ex.size))
            continue
        return seen, ex


def _by_run_io(
    vcpu: IoLoopVcpu, hand_back_every: int = 0
) -> tuple[list[tuple[bool, int, int, bool, int]], VmExit]:
    seen: list[tuple[bool, int, int, bool, int]] = []

    def handler(is_mmio: bool, address: int, size: int, is_write: bool, value: int) -> int | None:
        seen.append((is_mmio, address, size, is_write, value))
        if hand_back_every and len(seen) % hand_back_every == 0:
            return None
        return 0 if is_write else _read_value(is_mmio, address, size)

    while True:
        ex = vcpu.run_io(handler)
        if ex is None:  # handed back: complete it as a run() caller would
            is_mmio, address, size, is_write, _ = seen[-1]
            if not is_write:
                vcpu.complete_read(_read_value(is_mmio, address, size))  # type: ignore[attr-defined]
            continue
        if isinstance(ex, PioExit | MmioExit):  # string I/O elements come back as exits
            mmio = isinstance(ex, MmioExit)
            address = ex.address if isinstance(ex, MmioExit) else ex.port
            seen.append((mmio, address, ex.size, ex.is_write, ex.value))
            if not ex.is_write:
                vcpu.complete_read(_read_value(mmio, address, ex.size))  # type: ignore[attr-defined]
            continue
        return seen, ex


@pytest.fixture
def ram() -> Iterator[g.GuestRam]:
    r = g.GuestRam()
    yield r
    r.close()


@pytest.mark.kvm
@pytest.mark.parametrize("code", ["OUT_IN", "REP_OUTSB", "REP_INSW", "MMIO"])
@pytest.mark.parametrize("hand_back_every", [0, 2])
def test_run_io_sees_and_completes_the_same_accesses_as_run(
    ram: g.GuestRam, code: str, hand_back_every: int
) -> None:
    ok, why = kvm.KvmAccelerator.available()
    if not ok:
        pytest.skip(why)
    results = []
    for use_loop in (False, True):
        vm = kvm.KvmAccelerator().create_vm()
        try:
            ram.write(0, bytes(g.RAM_SIZE))
            ram.write(g.CODE_GPA, getattr(g, code))
            vm.map_memory(0, g.RAM_SIZE, ram.addr)
            vcpu = vm.create_vcpu(0)
            vcpu.set_state(g.real_mode_state())
            if use_loop:
                loop = io_loop_vcpu(vcpu)
                assert loop is not None
                seen, last = _by_run_io(loop, hand_back_every)
            else:
                seen, last = _by_run(vcpu)
            results.append((seen, last, vcpu.get_state().to_dict(), ram.read(0, g.RAM_SIZE)))
        finally:
            vm.close()
    assert results[0][0], "the guest made no I/O"
    assert results[1] == results[0]


@pytest.mark.kvm
def test_run_io_returns_a_kick_made_while_the_handler_ran(ram: g.GuestRam) -> None:
    ok, why = kvm.KvmAccelerator.available()
    if not ok:
        pytest.skip(why)
    vm = kvm.KvmAccelerator().create_vm()
    try:
        ram.write(g.CODE_GPA, g.OUT_IN)
        vm.map_memory(0, g.RAM_SIZE, ram.addr)
        vcpu = vm.create_vcpu(0)
        vcpu.set_state(g.real_mode_state())
        calls = []

        def handler(is_mmio: bool, address: int, size: int, is_write: bool, value: int) -> int:
            calls.append(address)
            vcpu.kick()  # as PAUSE does from another thread
            return 0

        assert vcpu.run_io(handler) == KickExit()
        assert calls == [0x10]  # the guest ran no further than the completion of that OUT
        assert vcpu.get_state().rip == g.CODE_GPA + 4
    finally:
        vm.close()


def test_io_loop_capability_is_read_from_the_class_not_forwarded_attributes() -> None:
    class Wrapper:
        def __init__(self, inner: object) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    class Loop:
        io_loop = True

    assert io_loop_vcpu(Loop()) is not None  # type: ignore[arg-type]
    assert io_loop_vcpu(Wrapper(Loop())) is None  # type: ignore[arg-type]


# ---- run_with_io / io_runner: one handler shape for every engine -----------------------------
class _RunOnly:
    """A vCPU with only ``run`` and ``complete_read`` (the shape of the fallback's wrapper)."""

    def __init__(self, exits: list[VmExit]) -> None:
        self.exits = exits
        self.reads: list[int] = []

    def run(self) -> VmExit:
        return self.exits.pop(0)

    def complete_read(self, value: int) -> None:
        self.reads.append(value)


def test_run_with_io_hands_every_access_to_the_handler_and_completes_reads() -> None:
    vcpu = _RunOnly([PioExit(0x80, 1, True, 7), MmioExit(0xD000, 4, False), PioExit(0x71, 1, False), _HALT])
    seen: list[tuple[bool, int, int, bool, int]] = []

    def handler(is_mmio: bool, address: int, size: int, is_write: bool, value: int) -> int:
        seen.append((is_mmio, address, size, is_write, value))
        return address & 0xFF

    assert run_with_io(vcpu, handler) == _HALT  # type: ignore[arg-type]
    assert seen == [(False, 0x80, 1, True, 7), (True, 0xD000, 4, False, 0), (False, 0x71, 1, False, 0)]
    assert vcpu.reads == [0x00, 0x71]  # the writes' values are not loaded anywhere


def test_run_with_io_stops_at_an_abandoned_access_and_leaves_it_uncompleted() -> None:
    vcpu = _RunOnly([PioExit(0x71, 1, False), _HALT])
    assert run_with_io(vcpu, lambda *a: None) is None  # type: ignore[arg-type]
    assert vcpu.reads == [] and vcpu.exits == [_HALT]


def test_io_runner_installs_the_handler_in_a_sync_io_engine_once() -> None:
    class Sync:
        sync_io = True

        def __init__(self) -> None:
            self.handlers: list[object] = []

        def set_io_handler(self, handler: object) -> None:
            self.handlers.append(handler)

        def run(self) -> VmExit:
            return _HALT

    def handler(is_mmio: bool, address: int, size: int, is_write: bool, value: int) -> int:
        return 0

    vcpu = Sync()
    run = io_runner(vcpu, handler)  # type: ignore[arg-type]
    assert run() == _HALT and run() == _HALT
    assert vcpu.handlers == [handler]


# ---- VcpuIoreq: the one insert/complete, bound once -------------------------------------------
def test_a_binding_fails_as_acrn_does_once_the_page_is_dropped(env: Env) -> None:
    env.create()
    vmid = env.dev.vmid
    env.hv.set_upcall(None)
    ioreq = env.hv.vcpu_ioreq(vmid, 0)
    assert ioreq is not None
    vm = env.hv.vm(vmid)
    assert vm is not None
    with env.hv.lock:
        vm.ioreq_buffer = None  # as a dropped buffer (hcall_set_ioreq_buffer)
        assert not ioreq.bound()
        assert ioreq.insert(uapi.ACRN_IOREQ_TYPE_PORTIO, True, 0x80, 1, 1) == EINVAL
        assert ioreq.complete() is None
        assert (
            env.hv.insert_request(vmid, 0, uapi.ACRN_IOREQ_TYPE_PORTIO, direction=1, address=0x80, size=1)
            == EINVAL
        )
    assert env.hv.vcpu_ioreq(vmid, 0) is None
    assert env.hv.vcpu_ioreq(vmid, 99) is None


def test_a_binding_follows_its_vmid_to_a_vm_created_again_with_another_page(env: Env) -> None:
    env.create()
    vmid = env.dev.vmid
    env.hv.set_upcall(None)
    ioreq = env.hv.vcpu_ioreq(vmid, 0)
    assert ioreq is not None
    old_page = ioreq.buf
    env.dev.ioctl(uapi.ACRN_IOCTL_PAUSE_VM, 0)
    env.dev.ioctl(uapi.ACRN_IOCTL_DESTROY_VM, 0)
    other = UserMem(4096)  # a fresh ioreq page
    try:
        env.create(ioreq_buf=other.addr)
        assert env.dev.vmid == vmid  # the same slot, a new VM
        assert ioreq.insert(uapi.ACRN_IOREQ_TYPE_PORTIO, True, 0x80, 1, 0x5A) == 0
        assert ioreq.buf == other.addr != old_page
        slot = env.hv.ioreq_slot(vmid, 0)
        assert slot is not None and slot.processed == PENDING
        assert slot.reqs.pio_request.address == 0x80 and slot.reqs.pio_request.value == 0x5A
    finally:
        env.dev.ioctl(uapi.ACRN_IOCTL_PAUSE_VM, 0)
        env.dev.ioctl(uapi.ACRN_IOCTL_DESTROY_VM, 0)
        other.close()


@pytest.mark.parametrize("hcid", [uapi.HC_NOTIFY_REQUEST_FINISH, 0x31, 0x12345631])
def test_notify_takes_one_path_whatever_the_bits_above_the_dispatch_byte(env: Env, hcid: int) -> None:
    """``dispatch_hypercall`` indexes by the low byte and ``parse_target_vm`` gives NOTIFY's id
    no special target, so every such id reaches the same handler with ``(u16)param1``."""
    env.create()
    vmid = env.dev.vmid
    assert env.hv.hypercall(hcid, vmid, 0) == 0  # CREATED, buffer set: allowed
    assert env.hv.hypercall(hcid, vmid, 99) == -1  # vcpu_id >= vcpu_num
    assert env.hv.hypercall(hcid, vmid + 5, 0) == -1  # no VM in that slot: the state rule's error
    assert env.hv.hypercall(hcid, 0xFFFF, 0) == ENOTTY  # beyond the slots


def test_notify_shortcut_rule_equals_check_state_for_every_state() -> None:
    idx = uapi.HC_NOTIFY_REQUEST_FINISH & 0xFF
    for state in VmState:
        for severity_pass in (False, True):
            for has_buffer in (False, True):
                shortcut_ok = state in _NOTIFY_ALLOWED and severity_pass and has_buffer
                expected = check_state(idx, state, severity_pass, has_buffer)
                assert (None if shortcut_ok else _NOTIFY_RULE.error) == expected, (
                    state,
                    severity_pass,
                    has_buffer,
                )


# ---- ATTACH wake-up ---------------------------------------------------------------------------
def test_a_dispatch_wakes_every_attach_waiter(env: Env) -> None:
    env.create()
    env.dev.ioctl(uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0)
    client = env.machine.hsm.vms[0].default_client
    assert client is not None
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(client.wait())) for _ in range(3)]
    for t in threads:
        t.start()
    while client.waiters < 3:
        threading.Event().wait(0.001)
    with env.machine.hsm.vms[0].clients_lock:
        client.pending.add(0)
        client.wake()
    for t in threads:
        t.join(timeout=10)
    assert results == [0, 0, 0]
    assert client.waiters == 0


# ---- on a guest -------------------------------------------------------------------------------
@pytest.fixture
def machine() -> Iterator[Machine]:
    m = Machine(accel="kvm")
    yield m
    m.runtime.close()


def _run_io_loop(machine: Machine, *, fast: bool, n: int = 50) -> tuple[dict[str, int], int, int]:
    gst = GUESTS["io_loop"]
    with VmSession(mem_size=gst.mem_size, device=EmulatedDevice(machine), accel="kvm", fast_path=fast) as s:
        s.load(gst.load_gpa, gst.image())
        s.set_regs(gst.regs(rcx=n, rdx=0x80))
        r = s.run(timeout=60)
        assert r.reason == "halt", r.summary()
        return r.exits, int(s.vm.ioreq_buffer().req_slot[0].processed), s.bus.unhandled_pio_writes[0x80]


@pytest.mark.kvm
def test_fast_and_faithful_paths_count_the_same_exits_and_free_the_slot(machine: Machine) -> None:
    fast = _run_io_loop(machine, fast=True)
    faithful = _run_io_loop(machine, fast=False)
    assert fast == faithful
    assert fast[0]["pio"] == 50 and fast[1] == FREE and fast[2] == 50


@pytest.mark.kvm
def test_fast_path_with_tracing_on_takes_the_traced_notify_and_counts_the_same(
    machine: Machine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="acrn.trace"):
        traced = _run_io_loop(machine, fast=True, n=5)
    notifies = [
        r for r in caplog.records if r.name == "acrn.trace" and "NOTIFY_REQUEST_FINISH" in r.getMessage()
    ]
    assert len(notifies) == 5
    assert traced == _run_io_loop(machine, fast=True, n=5)


def _pci_probe(machine: Machine, *, fast: bool) -> tuple[dict[str, int], dict[str, object]]:
    gst = GUESTS["pci_probe"]
    with VmSession(mem_size=gst.mem_size, device=EmulatedDevice(machine), accel="kvm", fast_path=fast) as s:
        s.load(gst.load_gpa, gst.image())
        s.set_regs(gst.regs())
        r = s.run(timeout=60)
        assert r.reason == "halt", r.summary()
        return r.exits, r.states[0]


@pytest.mark.kvm
def test_in_results_reach_rax_the_same_through_either_path(machine: Machine) -> None:
    # pci_probe reads PCI config space through CF8/CFC (INs answered by the kernel's combiner and
    # the device model) and ends with its last value in a register: the final registers match.
    fast = _pci_probe(machine, fast=True)
    faithful = _pci_probe(machine, fast=False)
    assert fast[0]["pio"] > 2
    assert fast == faithful


@pytest.mark.kvm
@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="no sched_getscheduler")
@pytest.mark.parametrize(("fast", "policy"), [(False, "SCHED_BATCH"), (True, "SCHED_OTHER")])
def test_the_ioreq_thread_runs_in_sched_batch_and_vcpu_threads_do_not(
    machine: Machine, fast: bool, policy: str
) -> None:
    policies: list[int] = []
    gst = GUESTS["io_loop"]
    with VmSession(mem_size=gst.mem_size, device=EmulatedDevice(machine), accel="kvm", fast_path=fast) as s:
        s.load(gst.load_gpa, gst.image())
        s.set_regs(gst.regs(rcx=1, rdx=0x80))
        s.bus.register_pio(0x80, 1, _PolicyProbe(policies))
        r = s.run(timeout=60)
        assert r.reason == "halt", r.summary()
    # The device runs on the ioreq thread (faithful) or on the vCPU thread (fast path).
    assert policies == [getattr(os, policy)]


class _PolicyProbe:
    """A device that records the scheduling policy of the thread it runs on."""

    def __init__(self, out: list[int]) -> None:
        self.out = out

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.out.append(os.sched_getscheduler(0))
