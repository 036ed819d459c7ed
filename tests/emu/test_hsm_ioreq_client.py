"""Ioreq clients and NOTIFY_REQUEST_FINISH, the kernel side (``drivers/virt/acrn/ioreq.c``)."""

from __future__ import annotations

import errno
import threading

import pytest

from acrn import uapi

from .hsm_support import Env, HypercallSpy, env_fixture

env = pytest.fixture(env_fixture)

CREATE, ATTACH, DESTROY = (
    uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT,
    uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT,
    uapi.ACRN_IOCTL_DESTROY_IOREQ_CLIENT,
)
NOTIFY = uapi.ACRN_IOCTL_NOTIFY_REQUEST_FINISH
PENDING, COMPLETE, PROCESSING, FREE = 0, 1, 2, 3
W, R = uapi.ACRN_IOREQ_DIR_WRITE, uapi.ACRN_IOREQ_DIR_READ


class Attacher:
    """ATTACH on a thread; ``started`` is set just before the ioctl, ``result`` after it."""

    def __init__(self, env: Env) -> None:
        self.result: int | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(env,))
        self.thread.start()

    def _run(self, env: Env) -> None:
        self.started.set()
        self.result = env.err(ATTACH)

    def join(self) -> int | None:
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        return self.result


def _wait_blocked(env: Env, a: Attacher) -> None:
    """Until the attacher waits on the client's condition (no sleeps: watch the waiter list)."""
    a.started.wait()
    client = env.machine.hsm.vms[0].default_client
    assert client is not None
    while not client.waiters:
        threading.Event().wait(0.001)


def test_create_ioreq_client_twice_is_eexist(env: Env) -> None:
    env.create()
    assert env.dev.ioctl(CREATE) == 0
    assert env.err(CREATE) == errno.EEXIST


def test_attach_without_client_is_enodev(env: Env) -> None:
    env.create()
    assert env.err(ATTACH) == errno.ENODEV


def test_destroy_ioreq_client_without_client_returns_0(env: Env) -> None:
    env.create()
    assert env.dev.ioctl(DESTROY) == 0


def test_attach_returns_0_at_once_when_a_request_is_pending(env: Env) -> None:
    env.create()
    env.dev.ioctl(CREATE)
    env.pio(0, 0x3F8, 1, W, 0x41)
    assert env.dev.ioctl(ATTACH) == 0


def test_attach_blocks_until_a_request_is_dispatched(env: Env) -> None:
    env.create()
    env.dev.ioctl(CREATE)
    a = Attacher(env)
    _wait_blocked(env, a)
    assert a.result is None
    env.pio(0, 0x3F8, 1, W, 0x41)
    assert a.join() == 0
    assert env.slot(0).processed == PROCESSING


def test_attach_returns_enodev_when_client_destroyed(env: Env) -> None:
    env.create()
    env.dev.ioctl(CREATE)
    a = Attacher(env)
    _wait_blocked(env, a)
    env.dev.ioctl(DESTROY)
    assert a.join() == errno.ENODEV


def test_attach_returns_0_on_signal_with_nothing_pending(env: Env) -> None:
    env.create()
    env.dev.ioctl(CREATE)
    a = Attacher(env)
    _wait_blocked(env, a)
    env.dev.interrupt_attach()
    assert a.join() == 0
    assert all(env.slot(i).processed == FREE for i in range(env.vm().vcpus.__len__()))


def test_attach_keeps_returning_while_not_notified(env: Env) -> None:
    env.create()
    env.dev.ioctl(CREATE)
    env.pio(0, 0x3F8, 1, W)
    assert env.dev.ioctl(ATTACH) == 0
    assert env.dev.ioctl(ATTACH) == 0  # the pending bit is only cleared by NOTIFY


def test_notify_completes_and_kicks_the_hypervisor(env: Env) -> None:
    vmid = env.create()
    env.dev.ioctl(CREATE)
    env.pio(0, 0x60, 1, R)
    env.slot(0).reqs.pio_request.value = 0x5A
    spy = HypercallSpy(env.machine)
    assert env.notify(0) == 0
    assert env.slot(0).processed == COMPLETE
    assert [c[:3] for c in spy.calls] == [(uapi.HC_NOTIFY_REQUEST_FINISH, vmid, 0)]
    assert env.hv.complete_request(vmid, 0) == 0x5A


def test_notify_without_default_client_returns_0_and_does_nothing(env: Env) -> None:
    env.create()
    spy = HypercallSpy(env.machine)
    assert env.notify(99) == 0
    assert spy.calls == []


def test_notify_rejects_nonzero_reserved(env: Env) -> None:
    env.create()
    env.dev.ioctl(CREATE)
    assert env.err(NOTIFY, uapi.acrn_ioreq_notify(reserved=1, vcpu=0)) == errno.EINVAL


def test_notify_bounds_vcpu_by_vcpu_num(env: Env) -> None:
    env.create()
    env.dev.ioctl(CREATE)
    n = len(env.vm().vcpus)
    assert env.notify(n) == errno.EINVAL


def test_notify_truncates_vcpu_to_16_bits(env: Env) -> None:
    env.create()
    env.dev.ioctl(CREATE)
    env.pio(0, 0x3F8, 1, W)
    assert env.notify(0x10000) == 0
    assert env.slot(0).processed == COMPLETE


def test_notify_ignores_vmid(env: Env) -> None:
    env.create()
    env.dev.ioctl(CREATE)
    env.pio(0, 0x3F8, 1, W)
    assert env.err(NOTIFY, uapi.acrn_ioreq_notify(vmid=0x77, vcpu=0)) == 0
    assert env.slot(0).processed == COMPLETE


def test_notify_does_not_check_the_slot_is_processing(env: Env) -> None:
    env.create()
    env.dev.ioctl(CREATE)
    assert env.slot(1).processed == FREE
    assert env.notify(1) == 0
    assert env.slot(1).processed == COMPLETE


def test_notify_in_polling_mode_does_not_kick(env: Env) -> None:
    env.create(vm_flag=uapi.GUEST_FLAG_IO_COMPLETION_POLLING)
    env.dev.ioctl(CREATE)
    env.pio(0, 0x3F8, 1, W)
    assert env.slot(0).completion_polling == 1
    spy = HypercallSpy(env.machine)
    assert env.notify(0) == 0
    assert env.slot(0).processed == COMPLETE and spy.calls == []


def test_destroy_client_leaves_processing_requests(env: Env) -> None:
    env.create()
    env.dev.ioctl(CREATE)
    env.pio(0, 0x3F8, 1, W)
    env.dev.ioctl(DESTROY)
    assert env.slot(0).processed == PROCESSING
    # New requests with no in-kernel match now stay PENDING.
    env.pio(1, 0x3F8, 1, W)
    assert env.slot(1).processed == PENDING


def test_destroy_client_runs_one_dispatch_pass(env: Env) -> None:
    import os

    env.create()
    env.pio(0, 0x100, 2, W, 1)  # no client anywhere: stays PENDING
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        io = uapi.acrn_ioeventfd(fd=efd, flags=uapi.ACRN_IOEVENTFD_FLAG_PIO, addr=0x100, len=2)
        env.dev.ioctl(uapi.ACRN_IOCTL_IOEVENTFD, io)
        env.dev.ioctl(CREATE)
        assert env.slot(0).processed == PENDING  # neither ioctl dispatches
        env.dev.ioctl(DESTROY)  # ioreq_resume: one pass, the ioeventfd client now takes it
        assert env.slot(0).processed == COMPLETE and env.slot(0).kernel_handled == 1
        assert os.eventfd_read(efd) == 1
    finally:
        os.close(efd)
