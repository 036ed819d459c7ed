"""The fast ioreq path on a running guest walks the same slot states as the faithful path
(``Documentation/virt/acrn/io-request.rst``).

The handler registered with ``Runtime.set_fast_handler`` sees the slot PROCESSING with
``kernel_handled == 0`` (the HSM dispatcher ran first); after its NOTIFY the slot is COMPLETE and
the hypervisor's post-work frees it before the guest's next exit.  No timings are asserted.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from acrn import uapi
from acrn.device import EmulatedDevice
from acrn.dm.ioreq_loop import IoreqLoop
from acrn.dm.vmm import VmSession
from acrn.emu.machine import Machine
from acrn.guests import GUESTS

ACCELS = [pytest.param("kvm", marks=pytest.mark.kvm), pytest.param("soft", marks=pytest.mark.soft)]
OUTS = 5


@pytest.fixture(params=ACCELS)
def machine(request: pytest.FixtureRequest) -> Iterator[Machine]:
    m = Machine(accel=str(request.param))
    yield m
    m.runtime.close()


def _io_loop(machine: Machine) -> VmSession:
    g = GUESTS["io_loop"]
    s = VmSession(
        mem_size=g.mem_size, device=EmulatedDevice(machine), accel=machine.runtime.accel_name, fast_path=True
    )
    s.load(g.load_gpa, g.image())
    s.set_regs(g.regs(rcx=OUTS, rdx=0x80))
    return s


def test_fast_handler_sees_processing_then_notify_completes_and_post_work_frees(machine: Machine) -> None:
    states: list[tuple[int, int, int, int, int]] = []
    with _io_loop(machine) as s:
        runtime = machine.runtime
        # The session's own fast handler, wrapped to watch the slot around it.
        s.vm.create_ioreq_client()
        loop = IoreqLoop(s.vm, s.bus, s.pci)

        def watch(vcpu_id: int, slot: uapi.acrn_io_request) -> None:
            before = (int(slot.processed), int(slot.kernel_handled))
            loop.handle_slot(slot)
            s.vm.notify_request_finish(vcpu_id)
            states.append((*before, int(slot.processed), int(slot.reqs.pio_request.value), vcpu_id))

        runtime.set_fast_handler(s.vm.vmid, watch)
        s.vm.start()
        report = runtime.wait_stop(s.vm.vmid, timeout=60)
        assert report is not None and report.reason == "halt", report
        assert s.vm.ioreq_buffer().req_slot[0].processed == uapi.ACRN_IOREQ_STATE_FREE
        s.vm.pause()
    proc, compl = uapi.ACRN_IOREQ_STATE_PROCESSING, uapi.ACRN_IOREQ_STATE_COMPLETE
    # io_loop writes the low byte of ECX, counting down.
    assert states == [(proc, 0, compl, OUTS - i, 0) for i in range(OUTS)]


def test_fast_path_with_a_cf8_write_never_calls_the_handler(machine: Machine) -> None:
    """0xCF8 is completed in the kernel (handle_cf8cfc) before the default client, on the fast path too."""
    calls: list[int] = []
    with _io_loop(machine) as s:
        g = GUESTS["io_loop"]
        s.set_regs(g.regs(rcx=OUTS, rdx=0xCF8))
        s.vm.create_ioreq_client()
        machine.runtime.set_fast_handler(s.vm.vmid, lambda vid, slot: calls.append(vid))
        s.vm.start()
        report = machine.runtime.wait_stop(s.vm.vmid, timeout=60)
        assert report is not None and report.reason == "halt", report
        s.vm.pause()
        assert s.vm.ioreq_buffer().req_slot[0].processed == uapi.ACRN_IOREQ_STATE_FREE
    assert calls == []
