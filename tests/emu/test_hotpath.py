"""The restructured I/O exit path keeps every slot state and every rule of the ioreq protocol
(``Documentation/virt/acrn/io-request.rst``; no timings here).

Covers the parts the hot path rewrote: the request written in place by ``insert_request`` (the
whole 64-byte union, zeros after the request), the cached slot views (a new page gets new views),
the dispatcher's skipped notify when no ATTACH waits, the in-process NOTIFY
(``HsmFile.notify_request_finish`` / ``EmulatedDevice.notify_request_finish``) with the ioctl's
checks, the HC_NOTIFY_REQUEST_FINISH shortcut inside ``Hypervisor.hypercall``, and the runtime's
IOREQ event.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from acrn import uapi
from acrn.emu.hv import HvListener, HvVm
from acrn.emu.hv.state import ENOTTY
from acrn.emu.runtime import _Completion

from .hsm_support import Env, HypercallSpy, env_fixture

env = pytest.fixture(env_fixture)

W, R = uapi.ACRN_IOREQ_DIR_WRITE, uapi.ACRN_IOREQ_DIR_READ
FREE, PENDING = uapi.ACRN_IOREQ_STATE_FREE, uapi.ACRN_IOREQ_STATE_PENDING
PROCESSING, COMPLETE = uapi.ACRN_IOREQ_STATE_PROCESSING, uapi.ACRN_IOREQ_STATE_COMPLETE


@pytest.fixture
def client_env(env: Env) -> Iterator[Env]:
    env.create()
    env.dev.ioctl(uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0)
    yield env


def _union(slot: uapi.acrn_io_request) -> bytes:
    return ctypes.string_at(ctypes.addressof(slot.reqs), 64)


def test_insert_request_writes_the_whole_union_with_zeros_after_a_pio_request(env: Env) -> None:
    env.create()
    s = env.slot(0)
    ctypes.memset(ctypes.addressof(s.reqs), 0xAB, 64)  # stale bytes of an earlier request
    assert env.pio(0, 0x3F8, 1, W, 0x1_0000_0041) == 0
    expected = bytes(uapi.acrn_pio_request(W, 0, 0x3F8, 1, 0x41)).ljust(64, b"\0")
    assert _union(s) == expected  # value masked to 32 bits, bytes 28..63 zero


def test_insert_request_writes_the_whole_union_with_zeros_after_an_mmio_request(env: Env) -> None:
    env.create()
    s = env.slot(1)
    ctypes.memset(ctypes.addressof(s.reqs), 0xCD, 64)
    assert env.mmio(1, 0xFED00000, 8, W, 0x1122334455667788) == 0
    expected = bytes(uapi.acrn_mmio_request(W, 0, 0xFED00000, 8, 0x1122334455667788)).ljust(64, b"\0")
    assert _union(s) == expected
    assert s.type == uapi.ACRN_IOREQ_TYPE_MMIO


def test_insert_request_with_a_union_copies_its_64_bytes(env: Env) -> None:
    env.create()
    reqs = uapi._acrn_io_request_reqs()
    reqs.pio_request.direction, reqs.pio_request.address, reqs.pio_request.size = R, 0x60, 1
    assert env.hv.insert_request(env.dev.vmid, 0, uapi.ACRN_IOREQ_TYPE_PORTIO, bytes(reqs)) == 0
    assert _union(env.slot(0)) == bytes(reqs)


def test_read_post_work_uses_the_direction_and_size_written_in_place(client_env: Env) -> None:
    env = client_env
    vmid = env.dev.vmid
    assert env.pio(0, 0x71, 2, R) == 0
    s = env.slot(0)
    assert s.processed == PROCESSING
    s.reqs.pio_request.value = 0xAABBCCDD
    assert env.notify(0) == 0
    assert s.processed == COMPLETE
    assert env.hv.complete_request(vmid, 0) == 0xCCDD  # masked to the 2-byte access
    assert s.processed == FREE


def test_slot_views_follow_a_new_ioreq_page(env: Env) -> None:
    """A VM created on another page after a destroy gets views of that page, not the old one."""
    env.create()
    assert env.pio(0, 0x80, 1, W) == 0
    env.dev.ioctl(uapi.ACRN_IOCTL_PAUSE_VM, 0)
    env.dev.ioctl(uapi.ACRN_IOCTL_DESTROY_VM, 0)
    page2 = env.mem()
    dev2 = env.open()
    env.create(dev=dev2, ioreq_buf=page2.addr)
    assert env.hv.insert_request(dev2.vmid, 0, uapi.ACRN_IOREQ_TYPE_PORTIO, address=0x81, size=1) == 0
    new_slot = uapi.acrn_io_request.from_address(page2.addr)
    assert new_slot.reqs.pio_request.address == 0x81
    assert new_slot.processed == PENDING  # no client: stays PENDING (acrn_ioreq_dispatch)


def test_dispatch_without_an_attach_waiter_still_hands_the_request_to_the_client(client_env: Env) -> None:
    env = client_env
    assert env.dev.file is not None
    client = env.dev.file.vm.default_client
    assert client is not None and client.waiters == 0
    assert env.pio(0, 0x80, 1, W, 7) == 0
    s = env.slot(0)
    assert (s.processed, s.kernel_handled) == (PROCESSING, 0)
    assert client.pending == {0}


def test_attach_blocked_before_the_request_is_woken_by_the_dispatch(client_env: Env) -> None:
    env = client_env
    result: list[int] = []
    entered = threading.Event()

    def attach() -> None:
        entered.set()
        result.append(env.err(uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT))

    t = threading.Thread(target=attach)
    t.start()
    entered.wait(10)
    assert env.pio(0, 0x80, 1, W, 1) == 0
    t.join(10)
    assert not t.is_alive() and result == [0]
    assert env.slot(0).processed == PROCESSING


def test_in_process_notify_completes_and_issues_the_notify_hypercall(client_env: Env) -> None:
    env = client_env
    vmid = env.dev.vmid
    assert env.pio(0, 0x80, 1, W, 1) == 0
    spy = HypercallSpy(env.machine)
    assert env.dev.notify_request_finish(vmid, 0) == 0
    assert env.slot(0).processed == COMPLETE
    assert [c[:3] for c in spy.calls] == [(uapi.HC_NOTIFY_REQUEST_FINISH, vmid, 0)]
    assert spy.calls[0][3] == 0


def test_in_process_notify_truncates_vcpu_to_u16_and_checks_vcpu_num(client_env: Env) -> None:
    env = client_env
    assert env.pio(0, 0x80, 1, W, 1) == 0
    assert env.dev.notify_request_finish(env.dev.vmid, 0x10000) == 0  # (u16) -> vCPU 0
    assert env.slot(0).processed == COMPLETE
    with pytest.raises(OSError) as e:
        env.dev.notify_request_finish(env.dev.vmid, 0xFFFF)
    assert e.value.errno == errno.EINVAL


def test_in_process_notify_without_client_returns_0_and_leaves_the_slot(env: Env) -> None:
    env.create()
    assert env.pio(0, 0x80, 1, W, 1) == 0
    assert env.dev.notify_request_finish(env.dev.vmid, 0) == 0
    assert env.slot(0).processed == PENDING


def test_in_process_notify_before_create_vm_is_einval(env: Env) -> None:
    with pytest.raises(OSError) as e:
        env.dev.notify_request_finish(0, 0)
    assert e.value.errno == errno.EINVAL


def test_in_process_notify_on_a_closed_fd_is_ebadf(env: Env) -> None:
    env.create()
    f = env.dev.file
    assert f is not None
    f.release()
    with pytest.raises(OSError) as e:
        f.notify_request_finish(0)
    assert e.value.errno == errno.EBADF


def test_notify_goes_through_the_traced_ioctl_while_tracing(
    client_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env = client_env
    assert env.pio(0, 0x80, 1, W, 1) == 0
    with caplog.at_level(logging.DEBUG, logger="acrn.trace"):
        env.dev.notify_request_finish(env.dev.vmid, 0)
    assert any("NOTIFY_REQUEST_FINISH" in r.getMessage() for r in caplog.records)
    assert env.slot(0).processed == COMPLETE


def test_notify_hypercall_shortcut_keeps_the_generic_checks(env: Env) -> None:
    hv = env.hv
    env.create()
    vmid = env.dev.vmid
    assert hv.hypercall(uapi.HC_NOTIFY_REQUEST_FINISH, vmid, 0) == 0
    assert hv.hypercall(uapi.HC_NOTIFY_REQUEST_FINISH, vmid, 99) == -1  # vcpu >= vcpu_num
    assert hv.hypercall(uapi.HC_NOTIFY_REQUEST_FINISH, vmid + 1, 0) == -1  # POWERED_OFF slot
    assert hv.hypercall(uapi.HC_NOTIFY_REQUEST_FINISH, 0xFFF0, 0) == ENOTTY  # no such slot
    # The low-byte dispatch without the 0x80 prefix takes the generic path: same answers.
    assert hv.hypercall(0x31, vmid, 0) == 0
    assert hv.hypercall(0x31, vmid, 99) == -1


def test_notify_hypercall_on_a_polling_vm_does_not_signal(env: Env) -> None:
    env.create(vm_flag=uapi.GUEST_FLAG_IO_COMPLETION_POLLING)
    seen: list[int] = []

    class Listener(HvListener):
        def request_completed(self, vm: HvVm, vcpu_id: int) -> None:
            seen.append(vcpu_id)

    listener = Listener()
    env.hv.add_listener(listener)
    try:
        assert env.hv.hypercall(uapi.HC_NOTIFY_REQUEST_FINISH, env.dev.vmid, 0) == 0
    finally:
        env.hv.remove_listener(listener)
    assert seen == []


def test_ioreq_event_wait_consumes_one_set() -> None:
    c = _Completion()
    assert not c.is_set()
    c.set()
    c.set()  # a second set while signalled is one signal
    assert c.is_set()
    assert c.wait(0)
    assert not c.wait(0)


def test_ioreq_event_clear_drops_a_stale_signal() -> None:
    c = _Completion()
    c.set()
    c.clear()
    assert not c.wait(0)


def test_ioreq_event_set_from_another_thread_wakes_the_waiter() -> None:
    c = _Completion()
    t = threading.Thread(target=c.set)
    t.start()
    assert c.wait(10)
    t.join()


# ---------------------------------------------------------------------- the in-process ATTACH
def test_in_process_attach_returns_at_once_with_a_request_pending(client_env: Env) -> None:
    env = client_env
    assert env.pio(0, 0x80, 1, W, 1) == 0
    assert env.dev.attach_ioreq_client() == 0
    assert env.slot(0).processed == PROCESSING  # ATTACH only waits; the slot is the loop's


def test_in_process_attach_is_released_by_destroying_the_client_with_enodev(client_env: Env) -> None:
    env = client_env
    result: list[int] = []

    def attach() -> None:
        try:
            env.dev.attach_ioreq_client()
            result.append(0)
        except OSError as e:
            result.append(e.errno or 0)

    t = threading.Thread(target=attach)
    t.start()
    f = env.dev.file
    assert f is not None and f.vm.default_client is not None
    client = f.vm.default_client
    deadline = time.monotonic() + 10
    while client.waiters == 0 and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert client.waiters == 1  # blocked in ATTACH, not returned early
    env.dev.ioctl(uapi.ACRN_IOCTL_DESTROY_IOREQ_CLIENT, 0)
    t.join(10)
    assert not t.is_alive() and result == [errno.ENODEV]


@pytest.mark.parametrize(
    ("state", "expected"),
    [("no vm", errno.EINVAL), ("no client", errno.ENODEV), ("closed", errno.EBADF)],
)
def test_in_process_attach_fails_as_the_ioctl_does(env: Env, state: str, expected: int) -> None:
    if state != "no vm":
        env.create()
    f = env.dev.file
    assert f is not None
    if state == "closed":
        f.release()
    with pytest.raises(OSError) as shortcut:
        f.attach_ioreq_client()
    with pytest.raises(OSError) as ioctl:
        f.ioctl(uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT, 0)
    assert shortcut.value.errno == ioctl.value.errno == expected


def test_attach_goes_through_the_traced_ioctl_while_tracing(
    client_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env = client_env
    assert env.pio(0, 0x80, 1, W, 1) == 0
    with caplog.at_level(logging.DEBUG, logger="acrn.trace"):
        assert env.dev.attach_ioreq_client() == 0
    assert any("ATTACH_IOREQ_CLIENT" in r.getMessage() for r in caplog.records)


def test_client_attach_raises_hsm_error_naming_the_ioctl(env: Env) -> None:
    from acrn import HsmError
    from acrn.hsm import Hsm

    hsm = Hsm(env.dev)
    vm = hsm.create_vm("")
    with pytest.raises(HsmError) as e:
        vm.attach_ioreq_client()  # no ioreq client yet
    assert e.value.errno == errno.ENODEV and "ATTACH_IOREQ_CLIENT" in str(e.value)
