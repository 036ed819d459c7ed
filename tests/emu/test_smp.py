"""SMP: APs wait for the guest's INIT/SIPI, as ACRN's do (``hcall_start_vm``,
``hypervisor/arch/x86/guest/vlapic.c: vlapic_process_init_sipi``).

Accelerator-level rules use the KVM accelerator with its irqchip directly and tiny guests; the
whole-stack tests run ``smp_hello`` (the BSP starts AP 1 through the local APIC's ICR, the AP
prints) through the emulated HSM.  The soft accelerator runs only the BSP (documented limitation).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from acrn.arch import CR0_ET, CR0_NE
from acrn.device import EmulatedDevice
from acrn.dm.vmm import VmSession
from acrn.emu.accel import kvm
from acrn.emu.accel.base import KickExit, PioExit, StartupExit
from acrn.emu.hv import VcpuState
from acrn.emu.machine import Machine
from acrn.emu.runtime import StopReport
from acrn.guests import GUESTS, SMP_HELLO_OUTPUT
from acrn.regs.model import VcpuRegs

from . import accel_guests as g

JOIN_TIMEOUT = 30.0

# ---- tiny guests (GNU as --32) -------------------------------------------------------------------
# BSP, .code32: movl $0x01000000,0xfee00310 (ICR high: APIC ID 1) ; movl $0x4500,0xfee00300 (INIT)
#               movl $0x4602,0xfee00300 (SIPI, vector 2: CS:IP = 0x0200:0) ; mov $0x77,%al ; out %al,$0x10 ; cli ; hlt
BSP_INIT_SIPI = bytes.fromhex("c7051003e0fe00000001c7050003e0fe00450000c7050003e0fe02460000b077e610faf4")
# The same with two INITs before the SIPI.
BSP_INIT_INIT_SIPI = bytes.fromhex(
    "c7051003e0fe00000001c7050003e0fe00450000c7050003e0fe00450000c7050003e0fe02460000b077e610faf4"
)
# The same without the INIT.
BSP_SIPI_ONLY = bytes.fromhex("c7051003e0fe00000001c7050003e0fe02460000b077e610faf4")
# AP at 0x2000, .code16: mov %bl,%al ; out %al,$0x12 ; cli ; hlt
AP_CODE = bytes.fromhex("88d8e612faf4")
AP_GPA = 0x2000
SIPI_VECTOR = AP_GPA >> 12


class SmpVm:
    """A two-vCPU KVM VM with the irqchip: BSP in protected mode at CODE_GPA, AP in wait-for-SIPI."""

    def __init__(self, bsp_code: bytes) -> None:
        kvm.install_kick_handler()
        self.ram = g.GuestRam()
        self.ram.write(g.CODE_GPA, bsp_code)
        self.ram.write(AP_GPA, AP_CODE)
        self.vm = kvm.KvmAccelerator(irqchip=True).create_vm()
        self.vm.map_memory(0, self.ram.size, self.ram.addr)
        self.bsp = self.vm.create_vcpu(0)
        self.ap = self.vm.create_vcpu(1)
        self.bsp.set_state(g.protected_mode_state())
        self.bsp.power_on(wait_for_sipi=False)
        self.ap_state = g.real_mode_state(rip=0x9999)
        self.ap_state.rbx = 0x5A
        self.ap_state.rcx = 0xC0FFEE
        self.ap_state.rsp = 0x1234
        self.ap.set_state(self.ap_state)
        self.ap.power_on(wait_for_sipi=True)

    def run_bsp(self) -> None:
        assert self.bsp.run() == PioExit(0x10, 1, True, 0x77)  # the IPIs are sent by now

    def close(self) -> None:
        self.vm.close()
        self.ram.close()


@pytest.fixture
def smp_vm(request: pytest.FixtureRequest) -> Iterator[SmpVm]:
    v = SmpVm(getattr(request, "param", BSP_INIT_SIPI))
    yield v
    v.close()


@pytest.mark.kvm
def test_ap_reports_startup_exit_with_the_sipi_vector(smp_vm: SmpVm) -> None:
    smp_vm.run_bsp()
    assert smp_vm.ap.run() == StartupExit(SIPI_VECTOR)


@pytest.mark.kvm
def test_sipi_sets_cs_selector_base_and_rip_only(smp_vm: SmpVm) -> None:
    # vlapic_process_init_sipi: CS.selector = V << 8, CS.base = V << 12, RIP = 0; every other register is
    # kept.
    smp_vm.run_bsp()
    smp_vm.ap.run()
    st = smp_vm.ap.get_state()
    assert (st.cs.selector, st.cs.base, st.rip) == (SIPI_VECTOR << 8, SIPI_VECTOR << 12, 0)
    want = smp_vm.ap_state
    assert (st.rbx, st.rcx, st.rsp, st.rdx) == (want.rbx, want.rcx, want.rsp, 0)
    assert (st.cr0, st.cs.limit, st.cs.ar) == (want.cr0, want.cs.limit, want.cs.ar)


@pytest.mark.kvm
def test_never_run_ap_keeps_its_registers_through_init(smp_vm: SmpVm) -> None:
    # KVM itself would reset the AP on INIT (CR0 0x60000010, RDX = CPUID signature); ACRN does not
    # reset a vCPU still in VCPU_INIT (vlapic_process_init_sipi), so the AP runs with the state it was given.
    smp_vm.run_bsp()
    smp_vm.ap.run()
    assert smp_vm.ap.run() == PioExit(0x12, 1, True, 0x5A)


@pytest.mark.kvm
@pytest.mark.parametrize("smp_vm", [BSP_INIT_INIT_SIPI], indirect=True)
def test_repeated_init_before_sipi_is_ignored_too(smp_vm: SmpVm) -> None:
    smp_vm.run_bsp()
    assert smp_vm.ap.run() == StartupExit(SIPI_VECTOR)
    assert smp_vm.ap.run() == PioExit(0x12, 1, True, 0x5A)


@pytest.mark.kvm
@pytest.mark.parametrize("smp_vm", [BSP_SIPI_ONLY], indirect=True)
def test_sipi_without_init_does_not_start_the_ap(smp_vm: SmpVm) -> None:
    smp_vm.run_bsp()
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(smp_vm.ap.run()))
    t.start()
    # The AP polls for INIT/SIPI; it must still be waiting when kicked (a StartupExit would win).
    assert smp_vm.bsp.run() is not None  # the BSP halts (cli; hlt) meanwhile: time for the AP to look
    smp_vm.ap.kick()
    t.join(JOIN_TIMEOUT)
    assert result == [KickExit()]


@pytest.mark.kvm
def test_kick_ends_the_wait_for_sipi(smp_vm: SmpVm) -> None:
    smp_vm.ap.kick()
    assert smp_vm.ap.run() == KickExit()


# ---- the whole stack ------------------------------------------------------------------------------
@pytest.fixture
def machine() -> Iterator[Machine]:
    m = Machine(accel="kvm")
    yield m
    m.runtime.close()


def smp_session(machine: Machine) -> VmSession:
    gst = GUESTS["smp_hello"]
    s = VmSession(mem_size=gst.mem_size, device=EmulatedDevice(machine), accel=machine.runtime.accel_name)
    s.load(gst.load_gpa, gst.image())
    s.set_regs(gst.regs())
    return s


def ap_regs(**gprs: int) -> VcpuRegs:
    """A real-mode state for AP 1, as SET_VCPU_REGS would land it (CS is replaced by the SIPI)."""
    r = VcpuRegs(cr0=CR0_ET | CR0_NE, cs_limit=0xFFFF, cs_ar=0x009F, **gprs)
    r.vcpu_id = 1
    return r


@pytest.mark.kvm
def test_bsp_starts_ap_with_init_sipi_through_the_lapic_and_the_ap_prints(machine: Machine) -> None:
    with smp_session(machine) as s:
        assert s.vm.vcpu_num >= 2
        result = s.run(timeout=JOIN_TIMEOUT)
    assert result.reason == "halt", result.summary()
    assert result.output.decode() == SMP_HELLO_OUTPUT.format(rbx=0)  # the reset template's RBX


@pytest.mark.kvm
def test_set_vcpu_regs_on_the_ap_survives_its_first_init(machine: Machine) -> None:
    with smp_session(machine) as s:
        s.vm.set_vcpu_regs(ap_regs(rbx=0x600DF00D), vcpu_id=1)
        result = s.run(timeout=JOIN_TIMEOUT)
    assert result.output.decode() == SMP_HELLO_OUTPUT.format(rbx=0x600DF00D), result.summary()


@pytest.mark.kvm
def test_ap_started_by_the_guest_is_running_in_the_hypervisor(machine: Machine) -> None:
    states: list[list[VcpuState]] = []

    def on_stop(report: StopReport) -> None:
        vm = machine.hv.vm(report.vmid)
        assert vm is not None
        states.append([v.state for v in vm.vcpus])

    machine.runtime.on_stop(on_stop)
    with smp_session(machine) as s:
        result = s.run(timeout=JOIN_TIMEOUT)
    assert result.reason == "halt"
    assert states[0][:2] == [VcpuState.RUNNING, VcpuState.RUNNING]  # ACRN: VCPU_INIT -> RUNNING on SIPI
    assert set(states[0][2:]) <= {VcpuState.INIT}  # never started


@pytest.mark.kvm
def test_reset_vm_puts_the_ap_back_to_wait_for_sipi(machine: Machine) -> None:
    with smp_session(machine) as s:
        first = s.run(timeout=JOIN_TIMEOUT)
        assert first.reason == "halt"
        s.vm.reset()  # PAUSE was done by run(); RESET -> CREATED, registers back to the template
        gst = GUESTS["smp_hello"]
        s.load(gst.load_gpa, gst.image())  # RAM survives RESET_VM: a fresh image (ap_flag = 0)
        s.set_regs(gst.regs())
        s.vm.set_vcpu_regs(ap_regs(rbx=0x2), vcpu_id=1)
        second = s.run(timeout=JOIN_TIMEOUT)
    assert second.reason == "halt", second.summary()
    expected = SMP_HELLO_OUTPUT.format(rbx=0) + SMP_HELLO_OUTPUT.format(rbx=2)
    assert second.output.decode() == expected


@pytest.mark.kvm
def test_destroying_a_vm_whose_aps_wait_for_sipi_leaks_nothing(no_leaks: None) -> None:
    m = Machine(accel="kvm")
    try:
        gst = GUESTS["hello_protected"]  # never starts its APs
        with VmSession(mem_size=gst.mem_size, device=EmulatedDevice(m), accel="kvm") as s:
            s.load(gst.load_gpa, gst.image())
            s.set_regs(gst.regs())
            result = s.run(timeout=JOIN_TIMEOUT)
            assert result.reason == "halt"
            assert len(m.runtime.vms[s.vm.vmid].vcpus) == s.vm.vcpu_num
    finally:
        m.runtime.close()


@pytest.mark.soft
def test_soft_accelerator_runs_only_the_bsp() -> None:
    # Documented limitation: no local APIC, so no INIT/SIPI; the guest's bounded wait gives up.
    m = Machine(accel="soft")
    try:
        with smp_session(m) as s:
            result = s.run(timeout=JOIN_TIMEOUT)
        assert result.output.decode() == "BSP\nAP TIMEOUT\n"
    finally:
        m.runtime.close()


@pytest.mark.kvm
def test_close_waits_for_an_ap_polling_for_its_sipi(smp_vm: SmpVm) -> None:
    errors: list[BaseException] = []
    entered = threading.Event()

    def wait() -> None:
        entered.set()
        try:
            smp_vm.ap.run()
        except ValueError as e:  # closed while waiting: as run() on a closed vCPU
            errors.append(e)

    t = threading.Thread(target=wait)
    t.start()
    entered.wait(JOIN_TIMEOUT)
    smp_vm.ap.close()  # must not free the fd under the polling thread
    t.join(JOIN_TIMEOUT)
    assert not t.is_alive()
    assert smp_vm.ap._fd == -1


@pytest.mark.kvm
@pytest.mark.parametrize(("affinity", "vcpus"), [(0b0010, 1), (0b0110, 2)])
def test_cpu_affinity_decides_how_many_vcpus_exist(machine: Machine, affinity: int, vcpus: int) -> None:
    gst = GUESTS["smp_hello"] if vcpus > 1 else GUESTS["hello_protected"]
    with VmSession(
        mem_size=gst.mem_size, device=EmulatedDevice(machine), accel="kvm", cpu_affinity=affinity
    ) as s:
        s.load(gst.load_gpa, gst.image())
        s.set_regs(gst.regs())
        result = s.run(timeout=JOIN_TIMEOUT)
        assert s.vm.vcpu_num == vcpus
        assert sorted(machine.runtime.vms[s.vm.vmid].vcpus) == list(range(vcpus))
    assert result.output.decode() == gst.expected_output, result.summary()
