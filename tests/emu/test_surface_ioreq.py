"""Requests in flight on a running guest: CLEAR_VM_IOREQ, DESTROY_IOREQ_CLIENT, ATTACH
(``drivers/virt/acrn/ioreq.c``: ``acrn_ioreq_request_clear``, ``acrn_ioreq_client_destroy``,
``acrn_ioreq_client_wait``, ``acrn_ioreq_request_default_complete``).

The test is the VM's default client.  ``ioevent_probe`` first reads its port (a request the test
holds in PROCESSING as long as it likes), then writes the value it got to the report port 0xE0, so
the next request in the slot shows what the guest received.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator

import pytest

from acrn import HsmError, uapi
from acrn.emu.machine import Machine
from acrn.guests import IOEVENT_PORT, REPORT_PORT

from .surface_support import ACCELS, RawVm, eventfd, machine_fixture, wait_until

machine = pytest.fixture(params=ACCELS)(machine_fixture)

PENDING, COMPLETE, PROCESSING, FREE = (
    uapi.ACRN_IOREQ_STATE_PENDING,
    uapi.ACRN_IOREQ_STATE_COMPLETE,
    uapi.ACRN_IOREQ_STATE_PROCESSING,
    uapi.ACRN_IOREQ_STATE_FREE,
)
R, W = uapi.ACRN_IOREQ_DIR_READ, uapi.ACRN_IOREQ_DIR_WRITE


@pytest.fixture
def raw(machine: Machine) -> Iterator[RawVm]:
    r = RawVm(machine, "ioevent_probe")
    yield r
    r.close()


def blocked_on_read(raw: RawVm) -> uapi.acrn_io_request:
    """Start the guest and wait until its port read sits PROCESSING in slot 0, unanswered."""
    raw.vm.create_ioreq_client()
    raw.vm.start()
    raw.attach()
    slot = raw.vm.ioreq_buffer().req_slot[0]
    assert (slot.processed, slot.type, slot.kernel_handled) == (PROCESSING, uapi.ACRN_IOREQ_TYPE_PORTIO, 0)
    assert (slot.reqs.pio_request.direction, slot.reqs.pio_request.address) == (R, IOEVENT_PORT)
    return slot


def in_guest(machine: Machine, vmid: int) -> bool:
    vmrt = machine.runtime.vms.get(vmid)
    return bool(vmrt and 0 in vmrt.vcpus and vmrt.vcpus[0].in_guest)


def test_in_flight_request_blocks_the_vcpu_until_notify(machine: Machine, raw: RawVm) -> None:
    slot = blocked_on_read(raw)
    assert not in_guest(machine, raw.vm.vmid)
    slot.reqs.pio_request.value = 0x1234
    raw.vm.notify_request_finish(0)
    raw.attach()  # the report write of the value the read returned
    assert (slot.reqs.pio_request.direction, slot.reqs.pio_request.address) == (W, REPORT_PORT)
    assert slot.reqs.pio_request.value == 0x1234


def test_clear_vm_ioreq_completes_in_flight_request_with_the_value_in_the_slot(
    machine: Machine, raw: RawVm
) -> None:
    slot = blocked_on_read(raw)
    slot.reqs.pio_request.value = 0x5A5A  # a client that wrote a value and never notified
    raw.vm.clear_vm_ioreq()
    raw.attach()
    # The read completed unhandled with what was in the slot; the guest reported it
    # (acrn_ioreq_request_clear).
    assert (slot.reqs.pio_request.address, slot.reqs.pio_request.value) == (REPORT_PORT, 0x5A5A)
    assert machine.hsm.vms[0].clearing is False


def test_clear_then_reset_after_pause_frees_the_slot_and_the_guest_reruns(
    machine: Machine, raw: RawVm
) -> None:
    # acrn-dm's guest reset: PAUSE -> CLEAR_VM_IOREQ -> RESET_VM -> SET_VCPU_REGS -> START (vm_system_reset).
    slot = blocked_on_read(raw)
    raw.vm.pause()
    assert slot.processed == PROCESSING  # pausing does not touch the slot
    raw.vm.clear_vm_ioreq()
    assert slot.processed == COMPLETE  # completed for a ZOMBIE vCPU; the hypervisor frees it at reset
    raw.vm.reset()
    assert slot.processed == FREE
    raw.vm.set_vcpu_regs(raw.regs)
    raw.vm.start()
    raw.attach()
    assert slot.processed == PROCESSING and slot.reqs.pio_request.address == IOEVENT_PORT


def test_destroy_ioreq_client_leaves_in_flight_request_processing(machine: Machine, raw: RawVm) -> None:
    slot = blocked_on_read(raw)
    raw.vm.destroy_ioreq_client()
    assert slot.processed == PROCESSING  # acrn_ioreq_client_destroy: nobody completes it
    assert not in_guest(machine, raw.vm.vmid)
    with pytest.raises(HsmError) as e:
        raw.vm.attach_ioreq_client()
    assert e.value.errno == errno.ENODEV
    raw.vm.clear_vm_ioreq()  # without a default client there is nothing to complete
    assert slot.processed == PROCESSING


def test_notify_on_a_new_client_finishes_an_orphaned_request(machine: Machine, raw: RawVm) -> None:
    # NOTIFY does not check that the slot is PROCESSING or was handed to this client
    # (acrn_ioreq_request_default_complete).
    slot = blocked_on_read(raw)
    raw.vm.destroy_ioreq_client()
    raw.vm.create_ioreq_client()
    slot.reqs.pio_request.value = 0x77
    raw.vm.notify_request_finish(0)
    raw.attach()
    assert (slot.reqs.pio_request.address, slot.reqs.pio_request.value) == (REPORT_PORT, 0x77)


def test_request_without_any_matching_client_stays_pending(machine: Machine, raw: RawVm) -> None:
    # The in-kernel ioeventfd client answers the read (0) without a default client; the report
    # write then matches no client and stays PENDING (acrn_ioreq_dispatch).
    efd = eventfd()
    try:
        raw.vm.ioeventfd(efd, IOEVENT_PORT, 2, pio=True)
        raw.vm.create_ioreq_client()
        raw.vm.destroy_ioreq_client()
        raw.vm.start()
        slot = raw.vm.ioreq_buffer().req_slot[0]
        wait_until(
            lambda: slot.processed == PENDING and slot.reqs.pio_request.address == REPORT_PORT, "PENDING"
        )
        assert slot.reqs.pio_request.value == 0  # the in-kernel read answered 0
        with pytest.raises(HsmError) as e:
            raw.vm.attach_ioreq_client()
        assert e.value.errno == errno.ENODEV
        assert slot.processed == PENDING
    finally:
        os.close(efd)


def spinning(machine: Machine) -> RawVm:
    r = RawVm(machine, "spin", name="spin")
    r.vm.create_ioreq_client()
    r.vm.start()
    wait_until(lambda: in_guest(machine, r.vm.vmid), "vCPU 0 in the guest")
    return r


def test_attach_returns_0_on_a_signal_with_nothing_pending(machine: Machine) -> None:
    r = spinning(machine)
    try:
        done = threading.Event()
        result: list[object] = []

        def attach() -> None:
            try:
                r.vm.attach_ioreq_client()
                result.append(0)
            except HsmError as e:
                result.append(e)
            done.set()

        t = threading.Thread(target=attach)
        t.start()
        # A signal only interrupts a thread that is already waiting: repeat until it returns.
        while not done.wait(0.01):
            r.dev.interrupt_attach()
        t.join()
        assert result == [0]  # acrn_ioreq_client_wait: 0, although no request is pending
        assert all(s.processed == FREE for s in r.vm.ioreq_buffer().req_slot[: r.vm.vcpu_num])
    finally:
        r.close()


def test_destroy_ioreq_client_wakes_a_blocked_attach_with_enodev(machine: Machine) -> None:
    r = spinning(machine)
    try:
        errors: list[int] = []

        def attach() -> None:
            try:
                r.vm.attach_ioreq_client()
            except HsmError as e:
                errors.append(e.errno)

        t = threading.Thread(target=attach)
        t.start()
        r.vm.destroy_ioreq_client()
        t.join(20)
        assert not t.is_alive() and errors == [errno.ENODEV]
    finally:
        r.close()
