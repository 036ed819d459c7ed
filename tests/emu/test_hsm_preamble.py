"""``acrn_dev_ioctl``'s preamble and how arguments travel: errno before and after CREATE_VM."""

from __future__ import annotations

import ctypes
import errno

import pytest

from acrn import uapi

from .hsm_support import Env, creation, env_fixture

env = pytest.fixture(env_fixture)

ALL_BUT_CREATE = [(n, c) for n, c in uapi.IOCTLS.items() if c != uapi.ACRN_IOCTL_CREATE_VM]
UNKNOWN_CMDS = [0xA2FF, 0xC030A2FF, 0x4008A290, 0x1234]


def _arg(cmd: int) -> object:
    ctype = uapi.IOCTL_ARG[cmd]
    if ctype is None or ctype == "value":
        return 0
    if ctype == "u64ptr":
        return bytearray(48)
    assert not isinstance(ctype, str)
    return bytearray(ctypes.sizeof(ctype))


@pytest.mark.parametrize(("name", "cmd"), ALL_BUT_CREATE, ids=[n for n, _ in ALL_BUT_CREATE])
def test_every_ioctl_on_fresh_fd_is_einval(env: Env, name: str, cmd: int) -> None:
    assert env.err(cmd, _arg(cmd)) == errno.EINVAL


@pytest.mark.parametrize("cmd", UNKNOWN_CMDS)
def test_unknown_cmd_before_create_is_einval(env: Env, cmd: int) -> None:
    assert env.err(cmd, 0) == errno.EINVAL


@pytest.mark.parametrize("cmd", UNKNOWN_CMDS)
def test_unknown_cmd_after_create_is_enotty(env: Env, cmd: int) -> None:
    env.create()
    assert env.err(cmd, 0) == errno.ENOTTY


def test_create_vm_with_wrong_size_encoding_is_enotty_once_vm_exists(env: Env) -> None:
    # The switch is on the full 32-bit number: CREATE_VM encoded with another size is unknown.
    env.create()
    assert env.err(uapi.ACRN_IOCTL_CREATE_VM ^ (1 << 16), bytearray(64)) == errno.ENOTTY


@pytest.mark.parametrize(("name", "cmd"), ALL_BUT_CREATE, ids=[n for n, _ in ALL_BUT_CREATE])
def test_every_known_ioctl_is_recognised_after_create(env: Env, name: str, cmd: int) -> None:
    """Zeroed arguments: any answer but ENOTTY, and no crash (ATTACH has no client: ENODEV)."""
    env.create()
    assert env.err(cmd, _arg(cmd)) != errno.ENOTTY


def test_after_destroy_fd_is_einval_again(env: Env) -> None:
    env.create()
    env.dev.ioctl(uapi.ACRN_IOCTL_PAUSE_VM, 0)
    env.dev.ioctl(uapi.ACRN_IOCTL_DESTROY_VM, 0)
    assert env.err(uapi.ACRN_IOCTL_START_VM) == errno.EINVAL
    assert env.err(0xA2FF) == errno.EINVAL


def test_short_buffer_is_efault(env: Env) -> None:
    assert env.err(uapi.ACRN_IOCTL_CREATE_VM, bytearray(47)) == errno.EFAULT
    assert env.hv.vms() == []


def test_unmapped_pointer_is_efault(env: Env) -> None:
    assert env.err(uapi.ACRN_IOCTL_CREATE_VM, 0x10) == errno.EFAULT
    env.create()
    assert env.err(uapi.ACRN_IOCTL_SET_VCPU_REGS, 0x1000) == errno.EFAULT
    assert env.err(uapi.ACRN_IOCTL_NOTIFY_REQUEST_FINISH, 8) == errno.EFAULT


def test_int_pointer_is_read_and_written_in_place(env: Env) -> None:
    """A C-like caller passes the struct's address: the kernel reads it and writes vmid back there."""
    c = creation(ioreq_buf=env.page.addr)
    assert env.dev.ioctl(uapi.ACRN_IOCTL_CREATE_VM, ctypes.addressof(c)) == 0
    assert c.vmid == env.dev.vmid != uapi.ACRN_INVALID_VMID
    assert c.vcpu_num == len(env.vm().vcpus)


def test_memoryview_argument_is_updated_in_place(env: Env) -> None:
    c = creation(ioreq_buf=env.page.addr)
    buf = bytearray(bytes(c))
    env.dev.ioctl(uapi.ACRN_IOCTL_CREATE_VM, memoryview(buf))
    assert uapi.acrn_vm_creation.from_buffer_copy(buf).vmid == env.dev.vmid


def test_argument_of_io_ioctls_is_ignored(env: Env) -> None:
    env.create()
    assert env.err(uapi.ACRN_IOCTL_START_VM, 0xDEAD0000) == 0  # an unmapped "pointer": not read


def test_closed_fd_is_ebadf(env: Env) -> None:
    f = env.machine.open()
    f.release()
    with pytest.raises(OSError) as ei:
        f.ioctl(uapi.ACRN_IOCTL_CREATE_VM, bytearray(48))
    assert ei.value.errno == errno.EBADF
