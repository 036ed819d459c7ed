"""IoreqLoop: acrn-dm's vm_loop (``devicemodel/core/main.c``) against a fake client over a real ioreq page."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from acrn import uapi
from acrn.dm.bus import IoBus
from acrn.dm.ioreq_loop import MMIO_INVALID, PCI_INVALID, PIO_INVALID, IoreqLoop

READ, WRITE = uapi.ACRN_IOREQ_DIR_READ, uapi.ACRN_IOREQ_DIR_WRITE
PENDING = uapi.ACRN_IOREQ_STATE_PENDING
COMPLETE = uapi.ACRN_IOREQ_STATE_COMPLETE
PROCESSING = uapi.ACRN_IOREQ_STATE_PROCESSING
FREE = uapi.ACRN_IOREQ_STATE_FREE


class FakeClient:
    """A default ioreq client: a real 4 KiB page; each attach() hands out one scripted batch."""

    def __init__(self, vcpu_num: int = 4) -> None:
        self.vcpu_num = vcpu_num
        self.buf = uapi.acrn_io_request_buffer()
        for slot in self.buf.req_slot:
            slot.processed = FREE
        self.notified: list[int] = []
        self.batches: list[list[tuple[int, int]]] = []  # per attach: (slot, state) to set
        self.attaches = 0

    def ioreq_buffer(self) -> uapi.acrn_io_request_buffer:
        return self.buf

    def attach(self) -> None:
        self.attaches += 1
        if not self.batches:
            raise OSError(errno.ENODEV, "client destroyed")
        for i, state in self.batches.pop(0):
            self.buf.req_slot[i].processed = state

    def notify_request_finish(self, vcpu: int) -> None:
        # What the kernel does on NOTIFY (ioreq_complete_request): the slot becomes COMPLETE.
        self.notified.append(vcpu)
        self.buf.req_slot[vcpu].processed = COMPLETE


def pio(client: FakeClient, i: int, port: int, size: int, direction: int, value: int = 0) -> None:
    slot = client.buf.req_slot[i]
    slot.type = uapi.ACRN_IOREQ_TYPE_PORTIO
    r = slot.reqs.pio_request
    r.direction, r.address, r.size, r.value = direction, port, size, value


def mmio(client: FakeClient, i: int, addr: int, size: int, direction: int, value: int = 0) -> None:
    slot = client.buf.req_slot[i]
    slot.type = uapi.ACRN_IOREQ_TYPE_MMIO
    r = slot.reqs.mmio_request
    r.direction, r.address, r.size, r.value = direction, addr, size, value


class Reg:
    def __init__(self, value: int) -> None:
        self.value = value
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def test_processing_pio_read_gets_device_value_and_is_notified() -> None:
    c, bus = FakeClient(), IoBus()
    bus.register_pio(0x3F8, 8, Reg(0x60))
    pio(c, 0, 0x3FD, 1, READ)
    c.batches = [[(0, PROCESSING)]]
    IoreqLoop(c, bus).run()
    assert c.buf.req_slot[0].reqs.pio_request.value == 0x60
    assert c.notified == [0]


def test_pio_write_reaches_device_masked_to_size() -> None:
    c, bus, dev = FakeClient(), IoBus(), Reg(0)
    bus.register_pio(0x80, 1, dev)
    pio(c, 1, 0x80, 1, WRITE, 0x1234)
    c.batches = [[(1, PROCESSING)]]
    IoreqLoop(c, bus).run()
    assert dev.writes == [(0, 1, 0x34)]
    assert c.notified == [1]


def test_unhandled_pio_read_returns_full_32_bit_all_ones() -> None:
    c = FakeClient()
    pio(c, 0, 0x61, 1, READ)
    c.batches = [[(0, PROCESSING)]]
    IoreqLoop(c, IoBus()).run()
    assert c.buf.req_slot[0].reqs.pio_request.value == PIO_INVALID == 0xFFFFFFFF


def test_unhandled_mmio_read_returns_64_bit_all_ones() -> None:
    c = FakeClient()
    mmio(c, 0, 0xFED00000, 4, READ)
    c.batches = [[(0, PROCESSING)]]
    IoreqLoop(c, IoBus()).run()
    assert c.buf.req_slot[0].reqs.mmio_request.value == MMIO_INVALID == 0xFFFFFFFFFFFFFFFF


def test_mmio_read_and_write_go_to_the_bus() -> None:
    c, bus, dev = FakeClient(), IoBus(), Reg(0xDEADBEEFCAFE)
    bus.register_mmio(0xC0000000, 0x1000, dev)
    mmio(c, 0, 0xC0000008, 8, READ)
    mmio(c, 1, 0xC0000010, 4, WRITE, 123)
    c.batches = [[(0, PROCESSING), (1, PROCESSING)]]
    IoreqLoop(c, bus).run()
    assert c.buf.req_slot[0].reqs.mmio_request.value == 0xDEADBEEFCAFE
    assert dev.writes == [(0x10, 4, 123)]
    assert c.notified == [0, 1]


def test_pcicfg_read_defaults_to_all_ones() -> None:
    c = FakeClient()
    slot = c.buf.req_slot[0]
    slot.type = uapi.ACRN_IOREQ_TYPE_PCICFG
    slot.reqs.pci_request.direction = READ
    slot.reqs.pci_request.size = 2
    c.batches = [[(0, PROCESSING)]]
    IoreqLoop(c, IoBus()).run()
    assert slot.reqs.pci_request.value == PCI_INVALID


def test_pcicfg_goes_to_the_pluggable_handler() -> None:
    seen: list[tuple[int, ...]] = []

    class Host:
        def cfg_read(self, bus: int, dev: int, func: int, reg: int, size: int) -> int | None:
            seen.append((bus, dev, func, reg, size))
            return 0x12348086 if (bus, dev, func, reg) == (0, 0, 0, 0) else None

        def cfg_write(self, bus: int, dev: int, func: int, reg: int, size: int, value: int) -> None:
            seen.append((bus, dev, func, reg, size, value))

    c = FakeClient()
    for i, (direction, value) in enumerate(((READ, 0), (WRITE, 0xABCD))):
        slot = c.buf.req_slot[i]
        slot.type = uapi.ACRN_IOREQ_TYPE_PCICFG
        r = slot.reqs.pci_request
        r.direction, r.size, r.value, r.bus, r.dev, r.func, r.reg = direction, 4, value, 0, 0, 0, 0
    c.buf.req_slot[1].reqs.pci_request.size = 2
    c.buf.req_slot[1].reqs.pci_request.reg = 4
    c.batches = [[(0, PROCESSING), (1, PROCESSING)]]
    IoreqLoop(c, IoBus(), pci=Host()).run()
    assert c.buf.req_slot[0].reqs.pci_request.value == 0x12348086
    assert seen == [(0, 0, 0, 0, 4), (0, 0, 0, 4, 2, 0xABCD)]


@pytest.mark.parametrize("state", [PENDING, COMPLETE, FREE])
def test_slots_not_processing_are_left_alone(state: int) -> None:
    c, dev = FakeClient(), Reg(7)
    bus = IoBus()
    bus.register_pio(0x80, 1, dev)
    pio(c, 0, 0x80, 1, READ, 0x55)
    c.batches = [[(0, state)]]
    IoreqLoop(c, bus).run()
    assert c.buf.req_slot[0].reqs.pio_request.value == 0x55
    assert c.buf.req_slot[0].processed == state
    assert c.notified == []


def test_kernel_handled_requests_are_skipped() -> None:
    c = FakeClient()
    pio(c, 0, 0x80, 1, READ, 0x55)
    c.buf.req_slot[0].kernel_handled = 1
    c.batches = [[(0, PROCESSING)]]
    IoreqLoop(c, IoBus()).run()
    assert c.buf.req_slot[0].reqs.pio_request.value == 0x55
    assert c.notified == []


def test_slots_beyond_vcpu_num_are_not_scanned() -> None:
    c = FakeClient(vcpu_num=2)
    pio(c, 2, 0x80, 1, READ)
    c.batches = [[(2, PROCESSING)]]
    IoreqLoop(c, IoBus()).run()
    assert c.notified == []


def test_loop_never_writes_processed_itself() -> None:
    class NoCompleteClient(FakeClient):
        def notify_request_finish(self, vcpu: int) -> None:
            self.notified.append(vcpu)  # a kernel that has not completed yet

    c = NoCompleteClient()
    pio(c, 0, 0x80, 1, WRITE)
    c.batches = [[(0, PROCESSING)]]
    IoreqLoop(c, IoBus()).run()
    assert c.buf.req_slot[0].processed == PROCESSING
    assert c.notified == [0]


def test_every_attach_batch_is_scanned_until_enodev() -> None:
    c = FakeClient()
    pio(c, 0, 0x80, 1, WRITE)
    pio(c, 3, 0x80, 1, WRITE)
    c.batches = [[(0, PROCESSING)], [], [(3, PROCESSING)]]
    loop = IoreqLoop(c, IoBus())
    loop.run()
    assert c.notified == [0, 3]
    assert c.attaches == 4
    assert loop.exit_error is not None and loop.exit_error.errno == errno.ENODEV


def test_other_attach_errors_also_end_the_loop() -> None:
    class Failing(FakeClient):
        def attach(self) -> None:
            raise OSError(errno.EINVAL, "bad")

    loop = IoreqLoop(Failing(), IoBus())
    loop.run()
    assert loop.exit_error is not None and loop.exit_error.errno == errno.EINVAL


def test_notify_postponed_while_reset_pending() -> None:
    c, dev = FakeClient(), Reg(9)
    bus = IoBus()
    bus.register_pio(0x80, 1, dev)
    pio(c, 0, 0x80, 1, READ)
    c.batches = [[(0, PROCESSING)]]
    loop = IoreqLoop(c, bus)
    loop.notify_postponed = True
    t = threading.Thread(target=loop.run)
    t.start()
    deadline = time.monotonic() + 10
    while loop.handled == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.05)
    assert c.buf.req_slot[0].reqs.pio_request.value == 9  # emulated...
    assert c.notified == []  # ...but not completed
    assert c.attaches == 1 and t.is_alive()  # no ATTACH (and no second look) until the reset is done
    loop.notify_postponed = False
    t.join(10)
    assert not t.is_alive() and c.attaches == 2  # attached again (the fake then ends with ENODEV)
    assert c.notified == []


def test_stop_releases_a_loop_held_by_a_postponed_notify() -> None:
    c = FakeClient()
    pio(c, 0, 0x80, 1, WRITE)
    c.batches = [[(0, PROCESSING)], [(0, PROCESSING)]]
    loop = IoreqLoop(c, IoBus())
    loop.notify_postponed = True
    t = threading.Thread(target=loop.run)
    t.start()
    deadline = time.monotonic() + 10
    while loop.handled == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    loop.stop()
    t.join(10)
    assert not t.is_alive() and c.attaches == 1


def test_stop_ends_run_after_the_current_scan() -> None:
    c = FakeClient()
    pio(c, 0, 0x80, 1, WRITE)
    c.batches = [[(0, PROCESSING)], [(0, PROCESSING)]]
    loop = IoreqLoop(c, IoBus())

    def notify_and_stop(vcpu: int) -> None:
        c.notified.append(vcpu)
        loop.stop()

    c.notify_request_finish = notify_and_stop  # type: ignore[method-assign]
    loop.run()
    assert c.notified == [0]
    assert c.attaches == 1
    assert loop.stopped


def test_unknown_request_type_is_counted_and_still_completed() -> None:
    c = FakeClient()
    c.buf.req_slot[0].type = 7
    c.batches = [[(0, PROCESSING)]]
    loop = IoreqLoop(c, IoBus())
    loop.run()
    assert loop.bad_requests == 1
    assert c.notified == [0]


def test_failing_device_read_gives_all_ones_and_completes() -> None:
    class Broken:
        def read(self, offset: int, size: int) -> int:
            raise RuntimeError("device bug")

        def write(self, offset: int, size: int, value: int) -> None:
            raise RuntimeError("device bug")

    c, bus = FakeClient(), IoBus()
    bus.register_pio(0x80, 1, Broken())
    pio(c, 0, 0x80, 1, READ)
    pio(c, 1, 0x80, 1, WRITE, 1)
    c.batches = [[(0, PROCESSING), (1, PROCESSING)]]
    IoreqLoop(c, bus).run()
    assert c.buf.req_slot[0].reqs.pio_request.value == PIO_INVALID
    assert c.notified == [0, 1]


def test_handle_slot_emulates_without_notifying() -> None:
    c, bus = FakeClient(), IoBus()
    bus.register_pio(0x70, 2, Reg(0x42))
    pio(c, 5, 0x71, 1, READ)
    loop = IoreqLoop(c, bus)
    loop.handle_slot(c.buf.req_slot[5])
    assert c.buf.req_slot[5].reqs.pio_request.value == 0x42
    assert c.notified == []
    assert loop.handled == 1


def test_run_on_a_thread_ends_when_client_is_destroyed(no_leaks: None) -> None:
    """acrn-dm's shutdown: ATTACH blocks; DESTROY_IOREQ_CLIENT wakes it with ENODEV."""

    class BlockingClient(FakeClient):
        def __init__(self) -> None:
            super().__init__()
            self.wake = threading.Event()
            self.destroyed = False
            self.entered = threading.Event()

        def attach(self) -> None:
            self.entered.set()
            self.wake.wait()
            self.wake.clear()
            if self.destroyed:
                raise OSError(errno.ENODEV, "destroyed")

    c = BlockingClient()
    loop = IoreqLoop(c, IoBus())
    t = threading.Thread(target=loop.run)
    t.start()
    assert c.entered.wait(10)
    c.destroyed = True
    c.wake.set()
    t.join(10)
    assert not t.is_alive()
    assert loop.exit_error is not None and loop.exit_error.errno == errno.ENODEV


class ResetDuring:
    """A device whose write asks for a guest reset that is over before the write returns, as when
    the reset sequence runs on another thread while the request is still being emulated."""

    def __init__(self) -> None:
        self.loop: IoreqLoop | None = None

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        assert self.loop is not None
        self.loop.notify_postponed = True  # request_reset
        self.loop.notify_postponed = False  # ... and the reset sequence is done


def test_a_request_whose_emulation_overlapped_a_reset_is_not_notified() -> None:
    # vm_loop: the request that asked for the reset is completed by CLEAR_VM_IOREQ; a
    # NOTIFY after the reset would complete a slot of the restarted guest.
    c, bus, dev = FakeClient(), IoBus(), ResetDuring()
    bus.register_pio(0x64, 1, dev)
    loop = dev.loop = IoreqLoop(c, bus)
    pio(c, 0, 0x64, 1, WRITE, 0xFE)
    c.buf.req_slot[0].processed = PROCESSING
    loop.complete(0, c.buf.req_slot[0])
    assert loop.handled == 1 and c.notified == []
    # The next request, after the reset, is notified again.
    pio(c, 0, 0x80, 1, WRITE, 1)
    c.buf.req_slot[0].processed = PROCESSING
    loop.complete(0, c.buf.req_slot[0])
    assert c.notified == [0]


class FailingNotify(FakeClient):
    def notify_request_finish(self, vcpu: int) -> None:
        self.notified.append(vcpu)
        raise OSError(errno.EPERM, "ACRN_IOCTL_NOTIFY_REQUEST_FINISH")


def test_a_failed_notify_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    # acrn-dm's vm_notify_request_done logs the failure and returns; the loop keeps serving (a
    # NOTIFY fails when the VM is torn down under a request in flight).
    c = FailingNotify()
    pio(c, 0, 0x80, 1, WRITE, 1)
    pio(c, 1, 0x80, 1, WRITE, 2)
    c.batches = [[(0, PROCESSING), (1, PROCESSING)]]
    loop = IoreqLoop(c, IoBus())
    loop.run()  # returns on the fake's ENODEV, not on the failed NOTIFY
    assert c.notified == [0, 1] and loop.notify_errors == 2 and c.attaches == 2
    assert loop.exit_error is not None and loop.exit_error.errno == errno.ENODEV
    assert "NOTIFY_REQUEST_FINISH of vCPU 0 failed" in caplog.text
