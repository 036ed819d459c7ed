"""CREATE/DESTROY/START/PAUSE/RESET and release, the kernel side (``drivers/virt/acrn/hsm.c``,
``drivers/virt/acrn/vm.c``)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading

import pytest

from acrn import uapi
from acrn.device import EmulatedDevice
from acrn.emu.hv import VmState
from acrn.emu.machine import Machine

from .hsm_support import Env, HypercallSpy, creation, env_fixture, readonly_copy

env = pytest.fixture(env_fixture)

PAUSE, DESTROY, START, RESET = (
    uapi.ACRN_IOCTL_PAUSE_VM,
    uapi.ACRN_IOCTL_DESTROY_VM,
    uapi.ACRN_IOCTL_START_VM,
    uapi.ACRN_IOCTL_RESET_VM,
)


def test_create_vm_writes_back_vmid_and_vcpu_num(env: Env) -> None:
    c = creation(b"POST_STD_VM1", ioreq_buf=env.page.addr)
    assert env.dev.ioctl(uapi.ACRN_IOCTL_CREATE_VM, c) == 0
    vm = env.vm(c.vmid)
    assert c.vmid == vm.vmid == env.dev.vmid
    assert c.vcpu_num == len(vm.vcpus) == 2  # POST_STD_VM1 is on pCPUs 1-2
    assert vm.state == VmState.CREATED
    # Untouched fields come back as they went in.
    assert bytes(c.uuid.b)[:12] == b"POST_STD_VM1" and c.ioreq_buf == env.page.addr


@pytest.mark.parametrize("field", ["reserved0", "reserved1"])
def test_create_vm_rejects_nonzero_reserved(env: Env, field: str) -> None:
    c = creation(ioreq_buf=env.page.addr)
    setattr(c, field, 1)
    assert env.err(uapi.ACRN_IOCTL_CREATE_VM, c) == errno.EINVAL
    assert env.hv.vms() == [] and env.dev.vmid == uapi.ACRN_INVALID_VMID


def test_create_vm_folds_hypervisor_failure_into_einval(env: Env) -> None:
    # The hypervisor refuses with -1 (slot not POWERED_OFF); the kernel says EINVAL, not EPERM.
    env.create(b"POST_STD_VM1")
    other = env.open()
    assert (
        env.err(uapi.ACRN_IOCTL_CREATE_VM, creation(b"POST_STD_VM1", env.mem().addr), dev=other)
        == errno.EINVAL
    )
    # An affinity outside the configured one is -1 in the hypervisor: EINVAL as well.
    assert (
        env.err(uapi.ACRN_IOCTL_CREATE_VM, creation(b"x", env.mem().addr, cpu_affinity=1 << 40), dev=other)
        == errno.EINVAL
    )


def test_create_vm_issues_create_then_set_ioreq_buffer(env: Env) -> None:
    spy = HypercallSpy(env.machine)
    vmid = env.create()
    assert spy.ids() == [uapi.HC_CREATE_VM, uapi.HC_SET_IOREQ_BUFFER]
    _, p1, p2, _ = spy.calls[1]
    assert p1 == vmid and p2 != env.page.addr  # param2 is a kernel copy of the u64, not the page


def test_create_vm_registers_page_base_of_misaligned_ioreq_buf(env: Env) -> None:
    env.create(ioreq_buf=env.page.addr + 0x123)
    assert env.vm().ioreq_buffer == env.page.addr


def test_create_vm_unmapped_ioreq_buf_is_einval_after_destroy_attempt(env: Env) -> None:
    spy = HypercallSpy(env.machine)
    assert env.err(uapi.ACRN_IOCTL_CREATE_VM, creation(b"lost", ioreq_buf=0x1000)) == errno.EINVAL
    assert env.dev.vmid == uapi.ACRN_INVALID_VMID
    assert spy.ids() == [uapi.HC_CREATE_VM, uapi.HC_DESTROY_VM]
    # The hypervisor refused to destroy a CREATED VM: in ACRN it stays, so its name stays taken.
    (leaked,) = env.hv.vms()
    assert leaked.state == VmState.CREATED
    assert env.err(uapi.ACRN_IOCTL_CREATE_VM, creation(b"lost", env.page.addr)) == errno.EINVAL
    # Emulator difference: closing the fd removes it.
    env.dev.close()
    assert env.hv.vms() == []


def test_create_vm_readonly_ioreq_page_is_einval(env: Env) -> None:
    ro = env.keep(readonly_copy(b""))
    assert env.err(uapi.ACRN_IOCTL_CREATE_VM, creation(ioreq_buf=ro.addr)) == errno.EINVAL
    assert env.dev.vmid == uapi.ACRN_INVALID_VMID


def test_create_vm_copy_to_user_fault_is_efault_and_vm_stays(env: Env) -> None:
    """The struct is readable but not writable: the VM is made, the write-back faults, the
    destroy attempt is refused (CREATED), and the fd keeps its VM (acrn_vm_create)."""
    ro = env.keep(readonly_copy(bytes(creation(ioreq_buf=env.page.addr))))
    assert env.err(uapi.ACRN_IOCTL_CREATE_VM, ro.addr) == errno.EFAULT
    vm = env.vm()
    assert vm.state == VmState.CREATED and vm.ioreq_buffer == env.page.addr
    assert env.err(START) == 0


def test_second_create_with_same_name_is_einval_and_changes_nothing(env: Env) -> None:
    vmid = env.create(b"same")
    assert env.err(uapi.ACRN_IOCTL_CREATE_VM, creation(b"same", env.mem().addr)) == errno.EINVAL
    assert env.dev.vmid == vmid and len(env.hv.vms()) == 1
    assert env.err(START) == 0


def test_second_create_with_other_name_orphans_both_vms(env: Env) -> None:
    env.create(b"first")
    assert env.err(uapi.ACRN_IOCTL_CREATE_VM, creation(b"second", env.mem().addr)) == errno.EINVAL
    assert env.dev.vmid == uapi.ACRN_INVALID_VMID
    assert sorted(v.name for v in env.hv.vms()) == ["first", "second"]
    assert all(v.state == VmState.CREATED for v in env.hv.vms())
    assert env.err(START) == errno.EINVAL  # the fd lost its VM
    env.dev.close()
    assert env.hv.vms() == []  # emulator difference: nothing leaks


def test_destroy_created_vm_is_eperm(env: Env) -> None:
    env.create()
    assert env.err(DESTROY) == errno.EPERM
    assert env.vm().state == VmState.CREATED


def test_destroy_running_vm_is_eperm(env: Env) -> None:
    env.create()
    env.dev.ioctl(START)
    assert env.err(DESTROY) == errno.EPERM
    assert env.vm().state == VmState.RUNNING


def test_destroy_after_pause_removes_vm_and_unpins(env: Env) -> None:
    vmid = env.create()
    ram = env.mem(1 << 16)
    m = uapi.acrn_vm_memmap(type=uapi.ACRN_MEMMAP_RAM, attr=7, user_vm_pa=0, len=1 << 16)
    m.vma_base = ram.addr
    env.dev.ioctl(uapi.ACRN_IOCTL_SET_MEMSEG, m)
    assert env.machine.hsm.pins.count() == 2
    env.dev.ioctl(PAUSE)
    assert env.dev.ioctl(DESTROY) == 0
    assert env.hv.vm(vmid) is None
    assert env.machine.hsm.pins.count() == 0 and env.machine.hsm.vms == []
    assert env.dev.vmid == uapi.ACRN_INVALID_VMID


def test_destroyed_flag_is_never_cleared(env: Env) -> None:
    """A second VM on the same fd cannot be destroyed through it: DESTROY returns 0, does nothing."""
    env.create(b"one")
    env.dev.ioctl(PAUSE)
    env.dev.ioctl(DESTROY)
    vmid = env.create(b"two")
    env.dev.ioctl(PAUSE)
    spy = HypercallSpy(env.machine)
    assert env.dev.ioctl(DESTROY) == 0
    assert spy.calls == []
    assert env.vm(vmid).state == VmState.PAUSED and env.dev.vmid == vmid
    env.dev.close()
    assert env.hv.vms() == []


def test_start_pause_reset_are_direct_hypercalls(env: Env) -> None:
    spy = HypercallSpy(env.machine)
    vmid = env.create()
    env.dev.ioctl(START, 0x1234)
    assert env.vm().state == VmState.RUNNING
    env.dev.ioctl(PAUSE)
    assert env.vm().state == VmState.PAUSED
    env.dev.ioctl(RESET)
    assert env.vm().state == VmState.CREATED
    assert [(h, p1, p2) for h, p1, p2, _ in spy.calls[2:]] == [
        (uapi.HC_START_VM, vmid, 0),
        (uapi.HC_PAUSE_VM, vmid, 0),
        (uapi.HC_RESET_VM, vmid, 0),
    ]


def test_reset_of_created_vm_is_eperm(env: Env) -> None:
    env.create()
    assert env.err(RESET) == errno.EPERM


def test_start_twice_is_eperm(env: Env) -> None:
    env.create()
    env.dev.ioctl(START)
    assert env.err(START) == errno.EPERM


def test_pause_of_running_rtvm_returns_0_and_destroy_fails(env: Env) -> None:
    env.create(b"POST_RT_VM1")
    env.dev.ioctl(START)
    assert env.dev.ioctl(PAUSE) == 0
    assert env.vm().state == VmState.RUNNING
    assert env.err(DESTROY) == errno.EPERM


def test_release_without_pause_frees_the_vm(env: Env) -> None:
    env.create()
    env.dev.ioctl(START)
    env.dev.close()
    assert env.hv.vms() == [] and env.machine.hsm.vms == []
    assert env.machine.hsm.open_files == set()


def test_release_frees_name_for_a_new_fd(env: Env) -> None:
    env.create(b"again")
    env.dev.close()
    d2 = env.open()
    assert env.create(b"again", dev=d2) >= 0


def test_fds_share_one_hypervisor(env: Env) -> None:
    a = env.create(b"a")
    d2 = env.open()
    b = env.create(b"b", dev=d2, ioreq_buf=env.mem().addr)
    assert a != b and {v.vmid for v in env.hv.vms()} == {a, b}


def test_default_machine_is_shared() -> None:
    from acrn.emu.machine import default_machine

    assert default_machine() is default_machine()
    with EmulatedDevice() as d:
        assert d.machine is default_machine()


def test_open_create_destroy_close_leaks_nothing(no_leaks: None) -> None:
    machine = Machine()
    page = mmap.mmap(-1, 4096)
    holder = ctypes.c_char.from_buffer(page)
    addr = ctypes.addressof(holder)
    del holder
    for _ in range(3):
        with EmulatedDevice(machine) as dev:
            dev.ioctl(uapi.ACRN_IOCTL_CREATE_VM, creation(b"leak", addr))
            dev.ioctl(uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0)
            efd = os.eventfd(0)
            dev.ioctl(uapi.ACRN_IOCTL_IRQFD, uapi.acrn_irqfd(fd=efd))
            dev.ioctl(
                uapi.ACRN_IOCTL_IOEVENTFD,
                uapi.acrn_ioeventfd(fd=efd, flags=uapi.ACRN_IOEVENTFD_FLAG_PIO, addr=0x100, len=2),
            )
            waiter = threading.Thread(target=lambda d=dev: _attach_quiet(d))
            waiter.start()
            dev.ioctl(uapi.ACRN_IOCTL_START_VM, 0)
            dev.ioctl(uapi.ACRN_IOCTL_PAUSE_VM, 0)
            dev.ioctl(uapi.ACRN_IOCTL_DESTROY_VM, 0)  # wakes the waiter with ENODEV
            waiter.join()
            os.close(efd)
    assert machine.hsm.pins.count() == 0 and machine.hv.vms() == []
    assert machine.memory._starts == []
    page.close()


def test_close_of_running_vm_with_irqfd_leaks_nothing(no_leaks: None) -> None:
    machine = Machine()
    page = mmap.mmap(-1, 4096)
    holder = ctypes.c_char.from_buffer(page)
    addr = ctypes.addressof(holder)
    del holder
    efd = os.eventfd(0)
    with EmulatedDevice(machine) as dev:
        dev.ioctl(uapi.ACRN_IOCTL_CREATE_VM, creation(b"leak", addr))
        dev.ioctl(uapi.ACRN_IOCTL_IRQFD, uapi.acrn_irqfd(fd=efd))
        dev.ioctl(uapi.ACRN_IOCTL_START_VM, 0)
    os.close(efd)
    assert machine.hv.vms() == [] and machine.hsm.pins.count() == 0
    page.close()


def _attach_quiet(dev: EmulatedDevice) -> None:
    try:
        dev.ioctl(uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT, 0)
    except OSError as e:
        assert e.errno in (errno.ENODEV, errno.EINVAL)  # EINVAL if DESTROY came first
