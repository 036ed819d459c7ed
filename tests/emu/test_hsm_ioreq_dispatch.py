"""The HSM dispatcher, the CF8/CFC combiner and CLEAR_VM_IOREQ (``drivers/virt/acrn/ioreq.c``)."""

from __future__ import annotations

import os

import pytest

from acrn import uapi

from .hsm_support import Env, HypercallSpy, env_fixture

env = pytest.fixture(env_fixture)

PENDING, COMPLETE, PROCESSING, FREE = 0, 1, 2, 3
W, R = uapi.ACRN_IOREQ_DIR_WRITE, uapi.ACRN_IOREQ_DIR_READ
CREATE = uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT


def test_pending_goes_to_default_client_as_processing(env: Env) -> None:
    env.create()
    env.dev.ioctl(CREATE)
    env.slot(0).kernel_handled = 1  # stale value: the dispatcher writes 0 for the default client
    env.mmio(0, 0xFED00000, 4, R)
    assert env.slot(0).processed == PROCESSING
    assert env.slot(0).kernel_handled == 0
    assert env.machine.hsm.vms[0].default_client.pending == {0}  # type: ignore[union-attr]


def test_no_client_leaves_request_pending(env: Env) -> None:
    env.create()
    spy = HypercallSpy(env.machine)
    env.pio(0, 0x3F8, 1, W)
    env.pio(1, 0x3F8, 1, W)
    assert env.slot(0).processed == PENDING and env.slot(1).processed == PENDING
    assert spy.calls == []


def test_cf8_write_is_kept_in_the_kernel_and_completed(env: Env) -> None:
    vmid = env.create()
    env.dev.ioctl(CREATE)
    spy = HypercallSpy(env.machine)
    env.pio(0, 0xCF8, 4, W, 0x80001234)
    assert env.slot(0).processed == COMPLETE
    assert env.machine.hsm.vms[0].pci_conf_addr == 0x80001234
    assert [c[:3] for c in spy.calls] == [(uapi.HC_NOTIFY_REQUEST_FINISH, vmid, 0)]
    assert env.machine.hsm.vms[0].default_client.pending == set()  # type: ignore[union-attr]


def test_cf8_read_returns_the_stored_address(env: Env) -> None:
    vmid = env.create()
    env.pio(0, 0xCF8, 4, W, 0x8000ABCC)
    env.hv.complete_request(vmid, 0)
    env.pio(0, 0xCF8, 4, R)
    assert env.slot(0).processed == COMPLETE
    assert env.hv.complete_request(vmid, 0) == 0x8000ABCC


@pytest.mark.parametrize("port", [0xCFC, 0xCFD, 0xCFE, 0xCFF])
def test_cfc_with_enable_clear_reads_all_ones_in_kernel(env: Env, port: int) -> None:
    vmid = env.create()
    env.dev.ioctl(CREATE)
    env.pio(0, port, 1, R)
    assert env.slot(0).processed == COMPLETE
    assert env.slot(0).reqs.pio_request.value == 0xFFFFFFFF
    assert env.hv.complete_request(vmid, 0) == 0xFF


def test_cfc_write_with_enable_clear_is_dropped(env: Env) -> None:
    env.create()
    env.dev.ioctl(CREATE)
    env.pio(0, 0xCFC, 4, W, 0x1234)
    assert env.slot(0).processed == COMPLETE
    assert env.machine.hsm.vms[0].default_client.pending == set()  # type: ignore[union-attr]


def test_cfc_with_enable_set_becomes_pcicfg(env: Env) -> None:
    vmid = env.create()
    env.dev.ioctl(CREATE)
    # enable | ext reg 0x3 (bits 27:24) | bus 0x12 | dev 0x05 | func 3 | reg 0x44
    addr = 0x80000000 | (0x3 << 24) | (0x12 << 16) | (0x05 << 11) | (3 << 8) | 0x44
    env.pio(0, 0xCF8, 4, W, addr)
    env.hv.complete_request(vmid, 0)
    env.pio(0, 0xCFE, 2, W, 0xBEEF)
    s = env.slot(0)
    assert s.processed == PROCESSING and s.kernel_handled == 0
    assert s.type == uapi.ACRN_IOREQ_TYPE_PCICFG
    pci = s.reqs.pci_request
    assert (pci.bus, pci.dev, pci.func, pci.reg) == (0x12, 0x05, 3, 0x344 + 2)
    assert (pci.direction, pci.size, pci.value) == (W, 2, 0xBEEF)


def test_cfc_with_enable_set_and_no_client_stays_pending_rewritten(env: Env) -> None:
    vmid = env.create()
    env.pio(0, 0xCF8, 4, W, 0x80000000)
    env.hv.complete_request(vmid, 0)
    env.pio(0, 0xCFC, 4, R)
    assert env.slot(0).processed == PENDING
    assert env.slot(0).type == uapi.ACRN_IOREQ_TYPE_PCICFG


def test_clear_vm_ioreq_completes_default_client_requests(env: Env) -> None:
    vmid = env.create()
    env.dev.ioctl(CREATE)
    env.pio(0, 0x3F8, 1, W)
    env.pio(1, 0x3F8, 1, W)
    spy = HypercallSpy(env.machine)
    assert env.dev.ioctl(uapi.ACRN_IOCTL_CLEAR_VM_IOREQ) == 0
    assert env.slot(0).processed == COMPLETE and env.slot(1).processed == COMPLETE
    assert [c[:3] for c in spy.calls] == [
        (uapi.HC_NOTIFY_REQUEST_FINISH, vmid, 0),
        (uapi.HC_NOTIFY_REQUEST_FINISH, vmid, 1),
    ]
    assert env.machine.hsm.vms[0].clearing is False


def test_clear_vm_ioreq_without_client_returns_0(env: Env) -> None:
    env.create()
    env.pio(0, 0x3F8, 1, W)
    assert env.dev.ioctl(uapi.ACRN_IOCTL_CLEAR_VM_IOREQ) == 0
    assert env.slot(0).processed == PENDING  # no dispatch happened meanwhile


def test_clearing_vm_completes_pending_requests_at_dispatch(env: Env) -> None:
    env.create()
    env.dev.ioctl(CREATE)
    vm = env.machine.hsm.vms[0]
    vm.clearing = True  # the window inside CLEAR_VM_IOREQ
    env.pio(0, 0x3F8, 1, R)
    assert env.slot(0).processed == COMPLETE
    assert vm.default_client.pending == set()  # type: ignore[union-attr]


def test_dispatcher_serves_every_vm(env: Env) -> None:
    env.create(b"a")
    env.dev.ioctl(CREATE)
    d2 = env.open()
    page2 = env.mem()
    vmid2 = env.create(b"b", dev=d2, ioreq_buf=page2.addr)
    d2.ioctl(CREATE)
    env.hv.insert_request(vmid2, 0, uapi.ACRN_IOREQ_TYPE_PORTIO, direction=W, address=0x80, size=1)
    assert uapi.acrn_io_request.from_address(page2.addr).processed == PROCESSING
    env.pio(0, 0x80, 1, W)
    assert env.slot(0).processed == PROCESSING


def test_global_list_is_newest_first(env: Env) -> None:
    env.create(b"a")
    d2 = env.open()
    env.create(b"b", dev=d2, ioreq_buf=env.mem().addr)
    assert [v.vmid for v in env.machine.hsm.vms] == [d2.vmid, env.dev.vmid]


def test_no_client_stops_the_scan_of_that_vm(env: Env) -> None:
    # acrn_ioreq_dispatch: the dispatcher gives up on the VM at the first slot without a client, so a
    # later slot stays PENDING even though the ioeventfd client would take it.
    env.create()
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        reg = uapi.acrn_ioeventfd(fd=fd, flags=uapi.ACRN_IOEVENTFD_FLAG_PIO, addr=0x510, len=2)
        env.dev.ioctl(uapi.ACRN_IOCTL_IOEVENTFD, reg)
        env.pio(0, 0x3F8, 1, W)  # no default client, no range: stuck
        env.pio(1, 0x510, 2, W)
        assert env.slot(0).processed == PENDING and env.slot(1).processed == PENDING
        with pytest.raises(BlockingIOError):
            os.eventfd_read(fd)
        # With the first slot out of the way, the next pass reaches it.
        env.slot(0).processed = FREE
        env.pio(0, 0x510, 2, W)
        assert env.slot(1).processed == COMPLETE and env.slot(0).processed == COMPLETE
        assert os.eventfd_read(fd) == 2
    finally:
        os.close(fd)


def test_a_stuck_vm_does_not_stop_the_next_vm(env: Env) -> None:
    d2 = env.open()
    page2 = env.mem()
    vmid2 = env.create(b"served", dev=d2, ioreq_buf=page2.addr)
    d2.ioctl(CREATE)
    env.create(b"stuck")  # newest: first on the global list, and it has no client
    env.pio(0, 0x3F8, 1, W)
    assert env.slot(0).processed == PENDING
    env.hv.insert_request(vmid2, 0, uapi.ACRN_IOREQ_TYPE_PORTIO, direction=W, address=0x80, size=1)
    assert uapi.acrn_io_request.from_address(page2.addr).processed == PROCESSING


def test_scan_is_bounded_by_vcpu_num(env: Env) -> None:
    # acrn_ioreq_dispatch: vm->vcpu_num (from CREATE_VM) bounds the scan; a slot beyond it is never looked at.
    env.create(cpu_affinity=0b1)
    assert env.vm().vcpu_num == 1
    env.dev.ioctl(CREATE)
    env.slot(1).processed = PENDING
    env.pio(0, 0x80, 1, W)
    assert env.slot(0).processed == PROCESSING
    assert env.slot(1).processed == PENDING


def test_cf8_access_of_another_size_still_replaces_the_whole_address(env: Env) -> None:
    # The kernel only WARNs when the size is not 4: the value is stored as the whole address.
    vmid = env.create()
    env.pio(0, 0xCF8, 4, W, 0x80001234)
    env.hv.complete_request(vmid, 0)
    env.pio(0, 0xCF8, 1, W, 0x7F)
    assert env.slot(0).processed == COMPLETE
    assert env.machine.hsm.vms[0].pci_conf_addr == 0x7F
    env.hv.complete_request(vmid, 0)
    env.pio(0, 0xCF8, 2, R)
    assert env.slot(0).reqs.pio_request.value == 0x7F


@pytest.mark.parametrize("port", [0xCF9, 0xCFA, 0xCFB, 0xD00])
def test_ports_next_to_cf8_and_cfc_are_not_combined(env: Env, port: int) -> None:
    # Only address 0xCF8 exactly and 0xCFC..0xCFF are PCI configuration ports.
    env.create()
    env.dev.ioctl(CREATE)
    env.pio(0, 0xCF8, 4, W, 0x80000000)  # enable set: would turn a data-port access into PCICFG
    env.hv.complete_request(env.dev.vmid, 0)
    env.pio(0, port, 1, R)
    s = env.slot(0)
    assert (s.processed, s.type, s.reqs.pio_request.address) == (
        PROCESSING,
        uapi.ACRN_IOREQ_TYPE_PORTIO,
        port,
    )
