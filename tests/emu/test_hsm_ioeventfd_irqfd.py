"""ioeventfd and irqfd with real eventfds (``drivers/virt/acrn/ioeventfd.c``, ``irqfd.c``)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest

from acrn import uapi

from .hsm_support import Env, HypercallSpy, env_fixture

env = pytest.fixture(env_fixture)

IOEVENTFD, IRQFD = uapi.ACRN_IOCTL_IOEVENTFD, uapi.ACRN_IOCTL_IRQFD
PIO, DATAMATCH, DEASSIGN = (
    uapi.ACRN_IOEVENTFD_FLAG_PIO,
    uapi.ACRN_IOEVENTFD_FLAG_DATAMATCH,
    uapi.ACRN_IOEVENTFD_FLAG_DEASSIGN,
)
COMPLETE = uapi.ACRN_IOREQ_STATE_COMPLETE
W, R = uapi.ACRN_IOREQ_DIR_WRITE, uapi.ACRN_IOREQ_DIR_READ


@pytest.fixture
def efd() -> Iterator[int]:
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    yield fd
    os.close(fd)


def count(fd: int) -> int:
    """The eventfd counter without consuming it."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("eventfd-count:"):
                return int(line.split()[1], 16)
    raise AssertionError("no eventfd-count")


def ioe(
    fd: int, addr: int, length: int = 2, flags: int = PIO, data: int = 0, reserved: int = 0
) -> uapi.acrn_ioeventfd:
    return uapi.acrn_ioeventfd(fd=fd, flags=flags, addr=addr, len=length, data=data, reserved=reserved)


# ------------------------------------------------------------------------------- ioeventfd
@pytest.mark.parametrize("flags", [0, DEASSIGN])
def test_ioeventfd_rejects_nonzero_reserved(env: Env, efd: int, flags: int) -> None:
    env.create()
    assert env.err(IOEVENTFD, ioe(efd, 0x100, flags=flags, reserved=1)) == errno.EINVAL


def test_ioeventfd_rejects_address_overflow(env: Env, efd: int) -> None:
    env.create()
    assert env.err(IOEVENTFD, ioe(efd, (1 << 64) - 1, 1, flags=0)) == errno.EINVAL


@pytest.mark.parametrize("length", [0, 3, 16])
def test_ioeventfd_rejects_bad_length(env: Env, efd: int, length: int) -> None:
    env.create()
    assert env.err(IOEVENTFD, ioe(efd, 0x100, length)) == errno.EINVAL


def test_ioeventfd_bad_fd_is_ebadf(env: Env) -> None:
    env.create()
    assert env.err(IOEVENTFD, ioe(0xFFFFFFFF, 0x100)) == errno.EBADF
    assert env.err(IOEVENTFD, ioe(4000, 0x100)) == errno.EBADF


def test_ioeventfd_non_eventfd_is_einval(env: Env) -> None:
    env.create()
    r, w = os.pipe()
    try:
        assert env.err(IOEVENTFD, ioe(r, 0x100)) == errno.EINVAL
    finally:
        os.close(r)
        os.close(w)


def test_ioeventfd_conflict_is_eexist(env: Env, efd: int) -> None:
    env.create()
    env.dev.ioctl(IOEVENTFD, ioe(efd, 0x100, flags=PIO | DATAMATCH, data=1))
    assert env.dev.ioctl(IOEVENTFD, ioe(efd, 0x100, flags=PIO | DATAMATCH, data=2)) == 0
    assert env.err(IOEVENTFD, ioe(efd, 0x100, flags=PIO)) == errno.EEXIST  # wildcard vs data
    assert env.err(IOEVENTFD, ioe(efd, 0x100, flags=PIO | DATAMATCH, data=2)) == errno.EEXIST
    assert env.dev.ioctl(IOEVENTFD, ioe(efd, 0x100, flags=DATAMATCH, data=1)) == 0  # MMIO: another type


def test_ioeventfd_conflict_sees_through_dup(env: Env, efd: int) -> None:
    env.create()
    env.dev.ioctl(IOEVENTFD, ioe(efd, 0x100))
    dup = os.dup(efd)
    try:
        assert env.err(IOEVENTFD, ioe(dup, 0x100)) == errno.EEXIST
    finally:
        os.close(dup)


def test_ioeventfd_write_signals_and_completes_in_kernel(env: Env, efd: int) -> None:
    vmid = env.create()
    env.dev.ioctl(uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT)
    env.dev.ioctl(IOEVENTFD, ioe(efd, 0x100, flags=PIO | DATAMATCH, data=3))
    env.pio(0, 0x100, 2, W, 3)
    assert env.slot(0).processed == COMPLETE and env.slot(0).kernel_handled == 1
    assert count(efd) == 1
    assert env.hv.complete_request(vmid, 0) == 0


def test_ioeventfd_read_in_range_returns_0_without_signal(env: Env, efd: int) -> None:
    vmid = env.create()
    env.dev.ioctl(IOEVENTFD, ioe(efd, 0xFEB00000, 4, flags=0))
    env.mmio(0, 0xFEB00000, 4, R, 0x1234)
    assert env.slot(0).processed == COMPLETE
    assert env.slot(0).reqs.mmio_request.value == 0
    assert env.hv.complete_request(vmid, 0) == 0 and count(efd) == 0


def test_ioeventfd_write_not_at_start_is_dropped(env: Env, efd: int) -> None:
    env.create()
    env.dev.ioctl(uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT)
    env.dev.ioctl(IOEVENTFD, ioe(efd, 0x100, 4))
    env.pio(0, 0x102, 1, W, 7)  # inside the range, another start address
    assert env.slot(0).processed == COMPLETE and env.slot(0).kernel_handled == 1
    assert count(efd) == 0


def test_ioeventfd_datamatch_mismatch_is_dropped(env: Env, efd: int) -> None:
    env.create()
    env.dev.ioctl(uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT)
    env.dev.ioctl(IOEVENTFD, ioe(efd, 0x100, flags=PIO | DATAMATCH, data=1))
    env.pio(0, 0x100, 2, W, 2)
    assert env.slot(0).processed == COMPLETE and count(efd) == 0


def test_ioeventfd_access_wider_than_range_goes_to_default_client(env: Env, efd: int) -> None:
    env.create()
    env.dev.ioctl(uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT)
    env.dev.ioctl(IOEVENTFD, ioe(efd, 0x100, 2))
    env.pio(0, 0x100, 4, W, 1)
    assert env.slot(0).processed == uapi.ACRN_IOREQ_STATE_PROCESSING and env.slot(0).kernel_handled == 0


def test_ioeventfd_cannot_catch_pci_config_ports(env: Env, efd: int) -> None:
    env.create()
    env.dev.ioctl(IOEVENTFD, ioe(efd, 0xCF8, 4))
    env.pio(0, 0xCF8, 4, W, 0x80000000)
    assert count(efd) == 0 and env.machine.hsm.vms[0].pci_conf_addr == 0x80000000


def test_ioeventfd_unknown_flags_are_ignored(env: Env, efd: int) -> None:
    env.create()
    assert env.dev.ioctl(IOEVENTFD, ioe(efd, 0x100, flags=PIO | 0x08)) == 0  # the fork's ASYNCIO


def test_ioeventfd_deassign_removes_first_entry_of_the_eventfd(env: Env, efd: int) -> None:
    env.create()
    env.dev.ioctl(uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT)
    env.dev.ioctl(IOEVENTFD, ioe(efd, 0x100))
    env.dev.ioctl(IOEVENTFD, ioe(efd, 0x200))
    assert env.dev.ioctl(IOEVENTFD, ioe(efd, 0x999, flags=DEASSIGN)) == 0  # address does not matter
    env.pio(0, 0x100, 2, W)
    assert env.slot(0).processed == uapi.ACRN_IOREQ_STATE_PROCESSING  # 0x100 went to the default client
    env.pio(1, 0x200, 2, W)
    assert env.slot(1).processed == COMPLETE and count(efd) == 1


def test_ioeventfd_deassign_of_unknown_eventfd_returns_0(env: Env, efd: int) -> None:
    env.create()
    assert env.dev.ioctl(IOEVENTFD, ioe(efd, 0x100, flags=DEASSIGN)) == 0


def test_ioeventfd_deassign_bad_fd_is_ebadf(env: Env) -> None:
    env.create()
    assert env.err(IOEVENTFD, ioe(4000, 0x100, flags=DEASSIGN)) == errno.EBADF


# ------------------------------------------------------------------------------- irqfd
def irqfd(fd: int, flags: int = 0, addr: int = 0xFEE00000, data: int = 0x31) -> uapi.acrn_irqfd:
    return uapi.acrn_irqfd(fd=fd, flags=flags, msi=uapi.acrn_msi_entry(addr, data))


def test_irqfd_bad_fd_is_ebadf(env: Env) -> None:
    env.create()
    assert env.err(IRQFD, irqfd(-1)) == errno.EBADF
    assert env.err(IRQFD, irqfd(4000)) == errno.EBADF


def test_irqfd_non_eventfd_is_einval(env: Env) -> None:
    env.create()
    r, w = os.pipe()
    try:
        assert env.err(IRQFD, irqfd(r)) == errno.EINVAL
    finally:
        os.close(r)
        os.close(w)


def test_irqfd_same_eventfd_twice_is_ebusy(env: Env, efd: int) -> None:
    env.create()
    env.dev.ioctl(IRQFD, irqfd(efd))
    assert env.err(IRQFD, irqfd(efd, data=0x32)) == errno.EBUSY


def test_irqfd_already_signalled_injects_at_once(env: Env, efd: int) -> None:
    env.create()
    os.eventfd_write(efd, 1)
    env.dev.ioctl(IRQFD, irqfd(efd, data=0x41))
    assert env.vm().msis == [(0xFEE00000, 0x41)]
    assert count(efd) == 1  # the counter is not consumed


def test_irqfd_signal_injects_msi(env: Env, efd: int) -> None:
    vmid = env.create()
    env.dev.ioctl(IRQFD, irqfd(efd, data=0x42))
    spy = HypercallSpy(env.machine)
    os.eventfd_write(efd, 1)
    assert spy.event.wait(10)
    ((hcid, p1, _, ret),) = spy.calls
    assert (hcid, p1, ret) == (uapi.HC_INJECT_MSI, vmid, 0)
    assert env.vm().msis == [(0xFEE00000, 0x42)]


def test_irqfd_deassign_stops_injection(env: Env, efd: int) -> None:
    env.create()
    env.dev.ioctl(IRQFD, irqfd(efd))
    assert env.dev.ioctl(IRQFD, irqfd(efd, flags=uapi.ACRN_IRQFD_FLAG_DEASSIGN)) == 0
    # After DEASSIGN the eventfd can be bound again (no EBUSY).
    assert env.dev.ioctl(IRQFD, irqfd(efd)) == 0


def test_irqfd_deassign_of_unknown_eventfd_returns_0(env: Env, efd: int) -> None:
    env.create()
    assert env.dev.ioctl(IRQFD, irqfd(efd, flags=uapi.ACRN_IRQFD_FLAG_DEASSIGN)) == 0
    assert env.err(IRQFD, irqfd(4000, flags=uapi.ACRN_IRQFD_FLAG_DEASSIGN)) == errno.EBADF


def test_irqfd_injection_failure_is_only_logged(env: Env, efd: int) -> None:
    env.create()
    env.dev.ioctl(IRQFD, irqfd(efd, addr=0x12345000))  # not an MSI address: -1 in the hypervisor
    spy = HypercallSpy(env.machine)
    os.eventfd_write(efd, 1)
    assert spy.event.wait(10)
    assert spy.calls[0][3] == -1 and env.vm().msis == []


def test_irqfd_injects_again_on_each_later_signal(env: Env, efd: int) -> None:
    env.create()
    env.dev.ioctl(IRQFD, irqfd(efd, data=0x43))
    for n in (1, 2):
        spy = HypercallSpy(env.machine)
        os.eventfd_write(efd, 1)  # the counter stays non-zero: each write is a new edge
        assert spy.event.wait(10)
        assert len(env.vm().msis) == n
