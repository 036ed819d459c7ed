"""Hypervisor dispatch (``vmcall.c: dispatch_hypercall``), CREATE_VM slot rules (``hcall_create_vm``), the
state table (``HC_STATE_RULES``), SET_VCPU_REGS order (``hcall_set_vcpu_regs``) and the hypervisor side of the
ioreq protocol (``hcall_set_ioreq_buffer``, ``hypervisor/dm/io_req.c: acrn_insert_request``)."""

from __future__ import annotations

import ctypes
import errno

import pytest

from acrn import uapi
from acrn.emu.hv import HC_STATE_RULES, HvListener, HvVm, Hypervisor, VcpuState, VmState

EINVAL = -errno.EINVAL
ENOTTY = -errno.ENOTTY


class Page:
    """A page-aligned 4 KiB buffer (an ioreq page, as acrn-dm's static one)."""

    def __init__(self) -> None:
        self._raw = ctypes.create_string_buffer(8192)
        self.addr = (ctypes.addressof(self._raw) + 4095) & ~4095

    def slots(self) -> uapi.acrn_io_request_buffer:
        return uapi.acrn_io_request_buffer.from_address(self.addr)


def create(
    hv: Hypervisor, name: bytes = b"", flags: int = 0, affinity: int = 0
) -> tuple[int, uapi.acrn_vm_creation]:
    cv = uapi.acrn_vm_creation()
    ctypes.memmove(ctypes.addressof(cv.uuid), name, len(name))
    cv.vm_flag = flags
    cv.cpu_affinity = affinity
    with hv.memory.kernel_copy(bytes(cv)) as kc:
        ret = hv.hypercall(uapi.HC_CREATE_VM, kc.gpa)
        return ret, uapi.acrn_vm_creation.from_buffer_copy(kc.contents())


def set_buffer(hv: Hypervisor, vmid: int, page: Page) -> int:
    with hv.memory.kernel_copy(page.addr.to_bytes(8, "little")) as kc:
        return hv.hypercall(uapi.HC_SET_IOREQ_BUFFER, vmid, kc.gpa)


def vm_in(hv: Hypervisor, state: VmState, page: Page, name: bytes = b"", flags: int = 0) -> int:
    """A VM brought to ``state`` through the hypercalls."""
    ret, cv = create(hv, name, flags)
    assert ret == 0 and cv.vmid != uapi.ACRN_INVALID_VMID
    vmid = int(cv.vmid)
    assert set_buffer(hv, vmid, page) == 0
    if state in (VmState.RUNNING, VmState.PAUSED):
        assert hv.hypercall(uapi.HC_START_VM, vmid) == 0
    if state == VmState.PAUSED:
        assert hv.hypercall(uapi.HC_PAUSE_VM, vmid) == 0
    vm = hv.vm(vmid)
    assert vm is not None and vm.state == state
    return vmid


def vcpu_regs(vcpu_id: int = 0, cr0: int = 0x30, cr4: int = 0) -> bytes:
    vr = uapi.acrn_vcpu_regs()
    vr.vcpu_id = vcpu_id
    vr.vcpu_regs.cr0 = cr0
    vr.vcpu_regs.cr4 = cr4
    vr.vcpu_regs.cs_sel = 0x1234
    vr.vcpu_regs.rip = 0x7C00
    return bytes(vr)


def set_regs(hv: Hypervisor, vmid: int, data: bytes) -> int:
    with hv.memory.kernel_copy(data) as kc:
        return hv.hypercall(uapi.HC_SET_VCPU_REGS, vmid, kc.gpa)


@pytest.fixture
def hv() -> Hypervisor:
    return Hypervisor()


@pytest.fixture
def page() -> Page:
    return Page()


# --- dispatch_hypercall ---------------------------------------------------------------------
def test_dispatch_uses_only_low_byte_of_hypercall_id(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.CREATED, page)
    assert hv.hypercall(0x12, vmid) == 0  # START_VM without the 0x80 << 24 prefix
    assert hv.vm(vmid).state == VmState.RUNNING  # type: ignore[union-attr]
    assert hv.hypercall(0x7F000013, vmid) == 0  # garbage in the upper bits: PAUSE_VM
    assert hv.vm(vmid).state == VmState.PAUSED  # type: ignore[union-attr]


@pytest.mark.parametrize("idx", [0x03, 0x17, 0x50, 0x51, 0x52, 0x60, 0xFF, 0x70, 0x90])
def test_unhandled_index_returns_enotty(hv: Hypervisor, idx: int) -> None:
    assert hv.hypercall((0x80 << 24) | idx, 0) == ENOTTY


def test_target_vmid_out_of_range_returns_enotty(hv: Hypervisor) -> None:
    assert hv.hypercall(uapi.HC_START_VM, 16) == ENOTTY
    assert hv.hypercall(uapi.HC_START_VM, 0x10000 + 16) == ENOTTY  # (u16)param1


def test_prelaunched_target_returns_enotty(hv: Hypervisor) -> None:
    assert hv.hypercall(uapi.HC_PAUSE_VM, 15) == ENOTTY
    assert create(hv, b"PRE_STD_VM1")[0] == ENOTTY


def test_vmid_is_truncated_to_16_bits(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.CREATED, page)
    assert hv.hypercall(uapi.HC_START_VM, 0xABCD0000 | vmid) == 0


def test_create_vm_without_prefix_resolves_target_from_param1(hv: Hypervisor) -> None:
    # parse_target_vm switches on the full id: 0x10 falls to "(u16)param1", a GPA far beyond 16 VMs.
    cv = uapi.acrn_vm_creation()
    with hv.memory.kernel_copy(bytes(cv)) as kc:
        if kc.gpa & 0xFFFF >= 16:
            assert hv.hypercall(0x10, kc.gpa) == ENOTTY
    assert hv.vms() == []


def test_get_api_version_writes_major_minor(hv: Hypervisor) -> None:
    with hv.memory.kernel_copy(bytes(8)) as kc:
        assert hv.hypercall(uapi.HC_GET_API_VERSION, kc.gpa) == 0
        assert kc.contents() == (1).to_bytes(4, "little") + (0).to_bytes(4, "little")


def test_get_api_version_unmapped_returns_einval(hv: Hypervisor) -> None:
    assert hv.hypercall(uapi.HC_GET_API_VERSION, 0) == EINVAL


@pytest.mark.parametrize(
    ("vector", "ret"), [(0x1F, EINVAL), (0x20, 0), (0xF3, 0), (0xFF, 0), (0x100, EINVAL)]
)
def test_set_callback_vector_range(hv: Hypervisor, vector: int, ret: int) -> None:
    assert hv.hypercall(uapi.HC_SET_CALLBACK_VECTOR, vector) == ret


def test_sos_remove_cpu_refuses_bsp(hv: Hypervisor) -> None:
    assert hv.hypercall(uapi.HC_SOS_REMOVE_CPU, 0) == -1
    assert hv.hypercall(uapi.HC_SOS_REMOVE_CPU, 2) == 0
    assert hv.service_vm.vcpus[2].state == VcpuState.OFFLINE


def test_create_vcpu_is_a_noop(hv: Hypervisor) -> None:
    assert hv.hypercall(uapi.HC_CREATE_VCPU, 0) == 0


# --- CREATE_VM -------------------------------------------------------------------------------
def test_create_vm_takes_dynamic_slot_and_writes_back_relative_vmid(hv: Hypervisor) -> None:
    ret, cv = create(hv, b"guest1")
    assert (ret, cv.vmid, cv.vcpu_num) == (0, 1, 3)  # slot 1, pCPUs 1-3 by default
    vm = hv.vm(1)
    assert vm is not None and vm.name == "guest1" and vm.state == VmState.CREATED
    assert [v.state for v in vm.vcpus] == [VcpuState.INIT] * 3


def test_create_vm_name_is_nul_terminated(hv: Hypervisor) -> None:
    assert create(hv, b"abc\0junk")[1].vmid == 1
    assert hv.vm(1).name == "abc"  # type: ignore[union-attr]


def test_create_vm_with_empty_name_gets_default_name(hv: Hypervisor) -> None:
    assert create(hv)[0] == 0
    assert hv.vm(1).name == "ACRN VM_1"  # type: ignore[union-attr]


def test_create_vm_vcpu_num_is_popcount_of_affinity(hv: Hypervisor) -> None:
    ret, cv = create(hv, b"a", affinity=0b1010)
    assert (ret, cv.vcpu_num) == (0, 2)
    assert [v.pcpu_id for v in hv.vm(cv.vmid).vcpus] == [1, 3]  # type: ignore[union-attr]


def test_create_vm_affinity_must_be_subset_of_configured(hv: Hypervisor) -> None:
    ret, _cv = create(hv, b"POST_STD_VM1", affinity=0b1000)  # slot affinity is 0b0110
    assert ret == -1
    assert hv.vms() == []


def test_create_vm_zero_affinity_means_all_configured(hv: Hypervisor) -> None:
    ret, cv = create(hv, b"POST_STD_VM1")
    assert (ret, cv.vmid, cv.vcpu_num) == (0, 13, 2)


def test_create_vm_same_name_twice_fails(hv: Hypervisor) -> None:
    assert create(hv, b"POST_STD_VM1")[0] == 0
    assert create(hv, b"POST_STD_VM1")[0] == -1
    assert hv.vm(13).state == VmState.CREATED  # type: ignore[union-attr]


def test_create_vm_failure_clears_dynamic_slot_name(hv: Hypervisor) -> None:
    assert create(hv, b"dyn")[0] == 0
    assert create(hv, b"dyn")[0] == -1  # slot not POWERED_OFF
    assert hv.vm_configs[1].name == ""  # ACRN clears a non-static slot's name on any failure
    assert hv.vm(1).name == "dyn"  # type: ignore[union-attr]


def test_create_vm_lapic_passthrough_without_rt_fails(hv: Hypervisor) -> None:
    assert create(hv, b"x", flags=uapi.GUEST_FLAG_LAPIC_PASSTHROUGH)[0] == -1
    assert hv.vm_configs[1].name == ""
    ret, cv = create(hv, b"x", flags=uapi.GUEST_FLAG_LAPIC_PASSTHROUGH | uapi.GUEST_FLAG_RT)
    assert ret == 0 and cv.vmid == 1


def test_create_vm_keeps_only_dm_owned_flags(hv: Hypervisor) -> None:
    ret, cv = create(hv, b"x", flags=uapi.GUEST_FLAG_IO_COMPLETION_POLLING | uapi.GUEST_FLAG_NVMX_ENABLED)
    assert ret == 0
    assert hv.vm(cv.vmid).guest_flags == uapi.GUEST_FLAG_IO_COMPLETION_POLLING  # type: ignore[union-attr]


def test_create_vm_failure_in_create_vm_returns_zero_with_invalid_vmid(hv: Hypervisor) -> None:
    # No secure-world memory for the slot: create_vm fails, the hypercall still returns 0.
    ret, cv = create(hv, b"x", flags=uapi.GUEST_FLAG_SECURE_WORLD_ENABLED)
    assert (ret, cv.vmid) == (0, uapi.ACRN_INVALID_VMID)
    assert hv.vm_configs[1].name == ""


def test_create_vm_without_free_slot_returns_enotty(hv: Hypervisor) -> None:
    for i in range(12):
        assert create(hv, f"vm{i}".encode())[1].vmid == i + 1
    assert create(hv, b"one-too-many")[0] == ENOTTY


def test_create_vm_unmapped_param_returns_enotty(hv: Hypervisor) -> None:
    assert hv.hypercall(uapi.HC_CREATE_VM, 0) == ENOTTY


# --- state table ---------------------------------------------------------------------------
def test_state_table_lists_every_spec3_hypercall() -> None:
    assert set(HC_STATE_RULES) >= {0x10, 0x11, 0x12, 0x13, 0x15, 0x16, 0x23, 0x24, 0x25, 0x30, 0x31, 0x42}
    assert HC_STATE_RULES[0x55].error == EINVAL and HC_STATE_RULES[0x53].error == -1


def test_start_vm_needs_ioreq_buffer(hv: Hypervisor) -> None:
    assert create(hv)[0] == 0
    assert hv.hypercall(uapi.HC_START_VM, 1) == -1


def test_start_vm_launches_only_bsp(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.RUNNING, page)
    assert [v.state for v in hv.vm(vmid).vcpus] == [VcpuState.RUNNING, VcpuState.INIT, VcpuState.INIT]  # type: ignore[union-attr]


@pytest.mark.parametrize("state", [VmState.RUNNING, VmState.PAUSED])
def test_start_vm_rejects_not_created(hv: Hypervisor, page: Page, state: VmState) -> None:
    vmid = vm_in(hv, state, page)
    assert hv.hypercall(uapi.HC_START_VM, vmid) == -1


def test_pause_vm_powered_off_fails(hv: Hypervisor) -> None:
    assert hv.hypercall(uapi.HC_PAUSE_VM, 1) == -1


def test_pause_vm_created_pauses_and_zombies_vcpus(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.CREATED, page)
    assert hv.hypercall(uapi.HC_PAUSE_VM, vmid) == 0
    vm = hv.vm(vmid)
    assert vm is not None and vm.state == VmState.PAUSED
    assert {v.state for v in vm.vcpus} == {VcpuState.ZOMBIE}


def test_pause_vm_paused_again_returns_zero_without_change(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.PAUSED, page)
    assert hv.hypercall(uapi.HC_PAUSE_VM, vmid) == 0
    assert hv.vm(vmid).state == VmState.PAUSED  # type: ignore[union-attr]


def test_pause_vm_running_high_severity_vm_returns_zero_without_pausing(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.RUNNING, page, name=b"POST_RT_VM1")
    assert hv.hypercall(uapi.HC_PAUSE_VM, vmid) == 0
    assert hv.vm(vmid).state == VmState.RUNNING  # type: ignore[union-attr]
    assert hv.hypercall(uapi.HC_DESTROY_VM, vmid) == -1  # so the following destroy fails


def test_pause_vm_ready_to_poweroff_pauses(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.RUNNING, page, name=b"POST_RT_VM1", flags=uapi.GUEST_FLAG_RT)
    hv.poweroff_rt_vm(vmid)
    assert hv.vm(vmid).state == VmState.READY_TO_POWEROFF  # type: ignore[union-attr]
    assert hv.hypercall(uapi.HC_PAUSE_VM, vmid) == 0
    assert hv.vm(vmid).state == VmState.PAUSED  # type: ignore[union-attr]


@pytest.mark.parametrize("state", [VmState.CREATED, VmState.RUNNING])
def test_destroy_vm_needs_paused(hv: Hypervisor, page: Page, state: VmState) -> None:
    vmid = vm_in(hv, state, page)
    assert hv.hypercall(uapi.HC_DESTROY_VM, vmid) == -1


def test_destroy_vm_powers_off_and_frees_dynamic_slot(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.PAUSED, page, name=b"dyn")
    vcpus = hv.vm(vmid).vcpus  # type: ignore[union-attr]
    assert hv.hypercall(uapi.HC_DESTROY_VM, vmid) == 0
    assert hv.vm(vmid) is None
    assert {v.state for v in vcpus} == {VcpuState.OFFLINE}
    assert hv.vm_configs[vmid].name == ""
    assert hv.hypercall(uapi.HC_DESTROY_VM, vmid) == -1  # POWERED_OFF now


def test_destroy_vm_keeps_static_slot_name(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.PAUSED, page, name=b"POST_STD_VM1")
    assert hv.hypercall(uapi.HC_DESTROY_VM, vmid) == 0
    assert hv.vm_configs[vmid].name == "POST_STD_VM1"
    assert create(hv, b"POST_STD_VM1")[1].vmid == vmid


@pytest.mark.parametrize("state", [VmState.CREATED, VmState.RUNNING])
def test_reset_vm_needs_paused(hv: Hypervisor, page: Page, state: VmState) -> None:
    vmid = vm_in(hv, state, page)
    assert hv.hypercall(uapi.HC_RESET_VM, vmid) == -1


def test_reset_vm_restores_template_frees_slots_and_inits_vcpus(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.CREATED, page)
    assert set_regs(hv, vmid, vcpu_regs()) == 0
    assert hv.vcpu_state(vmid, 0).rip == 0x7C00
    assert hv.hypercall(uapi.HC_START_VM, vmid) == 0
    assert hv.hypercall(uapi.HC_PAUSE_VM, vmid) == 0
    for i in range(16):
        page.slots().req_slot[i].processed = uapi.ACRN_IOREQ_STATE_PROCESSING
    assert hv.hypercall(uapi.HC_RESET_VM, vmid) == 0
    vm = hv.vm(vmid)
    assert vm is not None and vm.state == VmState.CREATED
    assert {v.state for v in vm.vcpus} == {VcpuState.INIT}
    st = hv.vcpu_state(vmid, 0)
    assert (st.cs.selector, st.cs.base, st.rip, st.cr0) == (0xF000, 0xFFFF0000, 0xFFF0, 0x30)
    assert {page.slots().req_slot[i].processed for i in range(16)} == {uapi.ACRN_IOREQ_STATE_FREE}


def test_set_ioreq_buffer_needs_created(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.RUNNING, page)
    assert set_buffer(hv, vmid, Page()) == -1


def test_set_ioreq_buffer_sets_all_slots_free(hv: Hypervisor, page: Page) -> None:
    assert create(hv)[0] == 0
    ctypes.memset(page.addr, 0, 4096)  # all PENDING
    assert set_buffer(hv, 1, page) == 0
    assert {page.slots().req_slot[i].processed for i in range(16)} == {uapi.ACRN_IOREQ_STATE_FREE}
    assert hv.vm(1).ioreq_buffer == page.addr  # type: ignore[union-attr]


def test_set_ioreq_buffer_unmapped_drops_buffer(hv: Hypervisor, page: Page) -> None:
    assert create(hv)[0] == 0
    assert set_buffer(hv, 1, page) == 0
    with hv.memory.kernel_copy((0).to_bytes(8, "little")) as kc:
        assert hv.hypercall(uapi.HC_SET_IOREQ_BUFFER, 1, kc.gpa) == -1
    assert hv.vm(1).ioreq_buffer is None  # type: ignore[union-attr]
    assert hv.hypercall(uapi.HC_SET_IOREQ_BUFFER, 1, 0) == -1  # the u64 itself unmapped


# --- hcall_set_vcpu_regs order ----------------------------------------------------------
def test_set_vcpu_regs_rejects_running_vm(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.RUNNING, page)
    assert set_regs(hv, vmid, vcpu_regs()) == -1


def test_set_vcpu_regs_rejects_powered_off_vm(hv: Hypervisor) -> None:
    assert set_regs(hv, 1, vcpu_regs()) == -1


def test_set_vcpu_regs_allowed_when_paused(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.PAUSED, page)
    assert set_regs(hv, vmid, vcpu_regs(1)) == 0
    assert hv.vcpu_state(vmid, 1).cs.selector == 0x1234


def test_set_vcpu_regs_rejects_null_param2(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.CREATED, page)
    assert hv.hypercall(uapi.HC_SET_VCPU_REGS, vmid, 0) == -1


def test_set_vcpu_regs_rejects_unmapped_param2(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.CREATED, page)
    assert hv.hypercall(uapi.HC_SET_VCPU_REGS, vmid, 8) == -1


def test_set_vcpu_regs_vcpu_id_bounded_by_pcpu_count_then_offline(hv: Hypervisor, page: Page) -> None:
    _ret, cv = create(hv, b"one", affinity=0b0010)
    assert cv.vcpu_num == 1
    assert set_buffer(hv, cv.vmid, page) == 0
    assert set_regs(hv, cv.vmid, vcpu_regs(4)) == -1  # >= pCPU count
    assert set_regs(hv, cv.vmid, vcpu_regs(1)) == -1  # < pCPU count but never created: OFFLINE
    assert set_regs(hv, cv.vmid, vcpu_regs(0)) == 0


def test_set_vcpu_regs_checks_cr0_cr4(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.CREATED, page)
    assert set_regs(hv, vmid, vcpu_regs(cr0=0x1)) == -1  # NE clear
    assert set_regs(hv, vmid, vcpu_regs(cr4=1 << 13)) == -1  # VMXE
    assert hv.vcpu_state(vmid, 0).rip == 0xFFF0  # nothing landed
    assert set_regs(hv, vmid, vcpu_regs(cr0=0x31)) == 0
    assert hv.vcpu_state(vmid, 0).cs.selector == 0x1234


def test_set_vcpu_regs_ignores_reserved_fields(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.CREATED, page)
    vr = uapi.acrn_vcpu_regs.from_buffer_copy(vcpu_regs())
    vr.reserved[0] = 7
    vr.vcpu_regs.reserved_64[0] = 7
    assert set_regs(hv, vmid, bytes(vr)) == 0  # only the kernel checks reserved fields


# --- ioreq, hypervisor side -----------------------------------------------------------
def test_insert_request_needs_free_slot(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.RUNNING, page)
    calls: list[int] = []
    hv.set_upcall(lambda: calls.append(1))
    assert hv.insert_request(vmid, 0, uapi.ACRN_IOREQ_TYPE_PORTIO, address=0x3F8, size=1) == 0
    slot = page.slots().req_slot[0]
    assert (slot.processed, slot.type, slot.reqs.pio_request.address) == (
        uapi.ACRN_IOREQ_STATE_PENDING,
        0,
        0x3F8,
    )
    assert calls == [1]
    assert hv.insert_request(vmid, 0, uapi.ACRN_IOREQ_TYPE_PORTIO, address=0x3F8, size=1) == EINVAL
    assert calls == [1]


def test_insert_request_needs_buffer(hv: Hypervisor) -> None:
    assert create(hv)[0] == 0
    assert hv.insert_request(1, 0, uapi.ACRN_IOREQ_TYPE_PORTIO, address=0x3F8, size=1) == EINVAL


def test_insert_request_sets_completion_polling_only_in_polling_mode(hv: Hypervisor, page: Page) -> None:
    _, cv = create(hv, b"p", flags=uapi.GUEST_FLAG_IO_COMPLETION_POLLING)
    assert set_buffer(hv, cv.vmid, page) == 0
    assert hv.insert_request(cv.vmid, 1, uapi.ACRN_IOREQ_TYPE_MMIO, address=0xFED00000, size=4) == 0
    assert page.slots().req_slot[1].completion_polling == 1
    page2 = Page()
    _ret, cv2 = create(hv, b"q")
    assert set_buffer(hv, cv2.vmid, page2) == 0
    page2.slots().req_slot[0].completion_polling = 5  # the hypervisor never writes 0 there
    assert hv.insert_request(cv2.vmid, 0, uapi.ACRN_IOREQ_TYPE_MMIO, address=0xFED00000, size=4) == 0
    assert page2.slots().req_slot[0].completion_polling == 5


def test_complete_request_only_when_complete(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.RUNNING, page)
    assert hv.insert_request(vmid, 0, uapi.ACRN_IOREQ_TYPE_PORTIO, address=0x3F8, size=1) == 0
    slot = page.slots().req_slot[0]
    slot.processed = uapi.ACRN_IOREQ_STATE_PROCESSING
    assert hv.complete_request(vmid, 0) is None
    assert slot.processed == uapi.ACRN_IOREQ_STATE_PROCESSING
    slot.reqs.pio_request.value = 0x1234
    slot.processed = uapi.ACRN_IOREQ_STATE_COMPLETE
    assert hv.complete_request(vmid, 0) == 0x34  # masked to the 1-byte access
    assert slot.processed == uapi.ACRN_IOREQ_STATE_FREE


def test_complete_request_mmio_read_value(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.RUNNING, page)
    assert hv.insert_request(vmid, 0, uapi.ACRN_IOREQ_TYPE_MMIO, address=0xFED00000, size=8) == 0
    slot = page.slots().req_slot[0]
    slot.reqs.mmio_request.value = 0x1122334455667788
    slot.processed = uapi.ACRN_IOREQ_STATE_COMPLETE
    assert hv.complete_request(vmid, 0) == 0x1122334455667788


def test_notify_request_finish_signals_vcpu(hv: Hypervisor, page: Page) -> None:
    vmid = vm_in(hv, VmState.RUNNING, page)
    seen: list[tuple[int, int]] = []

    class L(HvListener):
        def request_completed(self, vm: HvVm, vcpu_id: int) -> None:
            seen.append((vm.vmid, vcpu_id))

    hv.add_listener(L())
    assert hv.hypercall(uapi.HC_NOTIFY_REQUEST_FINISH, vmid, 0x10002) == 0  # vcpu truncated to u16
    assert seen == [(vmid, 2)]
    assert hv.hypercall(uapi.HC_NOTIFY_REQUEST_FINISH, vmid, 3) == -1  # >= created vCPUs


def test_notify_request_finish_needs_buffer(hv: Hypervisor) -> None:
    assert create(hv)[0] == 0
    assert hv.hypercall(uapi.HC_NOTIFY_REQUEST_FINISH, 1, 0) == -1


def test_notify_request_finish_polling_vm_does_not_signal(hv: Hypervisor, page: Page) -> None:
    _ret, cv = create(hv, b"p", flags=uapi.GUEST_FLAG_IO_COMPLETION_POLLING)
    assert set_buffer(hv, cv.vmid, page) == 0
    seen: list[int] = []

    class L(HvListener):
        def request_completed(self, vm: HvVm, vcpu_id: int) -> None:
            seen.append(vcpu_id)

    hv.add_listener(L())
    assert hv.hypercall(uapi.HC_NOTIFY_REQUEST_FINISH, cv.vmid, 0) == 0
    assert seen == []


def test_listeners_see_lifecycle_events(hv: Hypervisor, page: Page) -> None:
    events: list[str] = []

    class L(HvListener):
        def vm_created(self, vm: HvVm) -> None:
            events.append("vm_created")

        def vm_started(self, vm: HvVm) -> None:
            events.append("vm_started")

        def vm_paused(self, vm: HvVm) -> None:
            events.append("vm_paused")

        def vm_reset(self, vm: HvVm) -> None:
            events.append("vm_reset")

        def vm_destroyed(self, vm: HvVm) -> None:
            events.append("vm_destroyed")

        def memory_changed(self, vm: HvVm) -> None:
            events.append("memory_changed")

    listener = L()
    hv.add_listener(listener)
    vmid = vm_in(hv, VmState.PAUSED, page)
    assert hv.hypercall(uapi.HC_RESET_VM, vmid) == 0
    assert hv.hypercall(uapi.HC_PAUSE_VM, vmid) == 0
    assert hv.hypercall(uapi.HC_DESTROY_VM, vmid) == 0
    hv.remove_listener(listener)
    assert create(hv)[0] == 0
    assert events == ["vm_created", "vm_started", "vm_paused", "vm_reset", "vm_paused", "vm_destroyed"]
