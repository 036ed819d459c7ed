"""SET_VCPU_REGS, the kernel side (``acrn_dev_ioctl``): reserved-field checks in order, then the hypercall."""

from __future__ import annotations

import ctypes
import errno

import pytest

from acrn import uapi

from .hsm_support import Env, HypercallSpy, env_fixture

env = pytest.fixture(env_fixture)

SET = uapi.ACRN_IOCTL_SET_VCPU_REGS
_REGS = uapi.acrn_vcpu_regs.vcpu_regs.offset


def good_regs(rip: int = 0x1000) -> uapi.acrn_vcpu_regs:
    r = uapi.acrn_vcpu_regs(vcpu_id=0)
    r.vcpu_regs.cr0 = 0x30
    r.vcpu_regs.cs_ar = 0x9B
    r.vcpu_regs.cs_limit = 0xFFFF
    r.vcpu_regs.rip = rip
    return r


def _offsets() -> list[tuple[str, int]]:
    """Byte offset of every reserved element, in the kernel's check order."""
    regs = uapi.acrn_regs
    out = [(f"reserved[{i}]", uapi.acrn_vcpu_regs.reserved.offset + 2 * i) for i in range(3)]
    out += [(f"reserved_32[{i}]", _REGS + regs.reserved_32.offset + 4 * i) for i in range(3)]
    out += [(f"reserved_64[{i}]", _REGS + regs.reserved_64.offset + 8 * i) for i in range(4)]
    for i in range(3):
        out.append(
            (f"gdt.reserved[{i}]", _REGS + regs.gdt.offset + uapi.acrn_descriptor_ptr.reserved.offset + 2 * i)
        )
        out.append(
            (f"idt.reserved[{i}]", _REGS + regs.idt.offset + uapi.acrn_descriptor_ptr.reserved.offset + 2 * i)
        )
    return out


RESERVED = _offsets()


@pytest.mark.parametrize(("field", "offset"), RESERVED, ids=[f for f, _ in RESERVED])
def test_set_vcpu_regs_rejects_nonzero_reserved(env: Env, field: str, offset: int) -> None:
    env.create()
    before = env.dev.vcpu_state(0)
    buf = bytearray(bytes(good_regs()))
    buf[offset] = 0x80
    spy = HypercallSpy(env.machine)
    assert env.err(SET, buf) == errno.EINVAL
    assert spy.calls == []  # rejected in the kernel
    assert env.dev.vcpu_state(0) == before


def test_set_vcpu_regs_does_not_check_tail_padding(env: Env) -> None:
    env.create()
    buf = bytearray(bytes(good_regs(rip=0x7000)))
    assert len(buf) == 296
    buf[8 + 284 : 8 + 288] = b"\xff\xff\xff\xff"
    assert env.dev.ioctl(SET, buf) == 0
    assert env.dev.vcpu_state(0)["rip"] == 0x7000


def test_set_vcpu_regs_passes_a_kernel_copy_with_the_fd_vmid(env: Env) -> None:
    vmid = env.create()
    regs = good_regs(rip=0x1234)
    spy = HypercallSpy(env.machine)
    env.dev.ioctl(SET, regs)
    ((hcid, p1, p2, ret),) = spy.calls
    assert (hcid, p1, ret) == (uapi.HC_SET_VCPU_REGS, vmid, 0)
    assert p2 != ctypes.addressof(regs)
    assert env.dev.vcpu_state(0)["rip"] == 0x1234 and env.dev.vcpu_state(0)["cs"]["ar"] == 0x9B


def test_set_vcpu_regs_rejects_running_vm(env: Env) -> None:
    env.create()
    env.dev.ioctl(uapi.ACRN_IOCTL_START_VM)
    assert env.err(SET, good_regs()) == errno.EPERM


def test_set_vcpu_regs_returns_hypervisor_minus_one_as_eperm(env: Env) -> None:
    env.create()
    r = good_regs()
    r.vcpu_regs.cr0 = 0x1  # NE clear: is_valid_cr0_cr4 fails with -1
    assert env.err(SET, r) == errno.EPERM
    r = good_regs()
    r.vcpu_id = 64  # beyond the pCPU count: -1
    assert env.err(SET, r) == errno.EPERM


def test_set_vcpu_regs_short_buffer_is_efault(env: Env) -> None:
    env.create()
    assert env.err(SET, bytearray(bytes(good_regs()))[:292]) == errno.EFAULT


def test_set_vcpu_regs_works_on_paused_vm(env: Env) -> None:
    env.create()
    env.dev.ioctl(uapi.ACRN_IOCTL_START_VM)
    env.dev.ioctl(uapi.ACRN_IOCTL_PAUSE_VM)
    assert env.dev.ioctl(SET, good_regs(rip=0x2000)) == 0
    assert env.dev.vcpu_state(0)["rip"] == 0x2000
