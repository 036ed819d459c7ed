"""The KVM accelerator's interrupt controllers (irqchip=True): lines, MSIs, reset, and HLT detection.

With the in-kernel irqchip HLT sleeps inside KVM_RUN; the accelerator's halt
probe still reports a vCPU halted with interrupts disabled as HaltExit(False), which is what ends a
VM in the runtime.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator

import pytest

from acrn.emu.accel import kvm
from acrn.emu.accel import kvm_irq as ki
from acrn.emu.accel.base import HaltExit, KickExit, interrupt_controller, multiprocessor_vcpu

from . import accel_guests as g

pytestmark = pytest.mark.kvm
JOIN_TIMEOUT = 30.0


@pytest.fixture
def ram() -> Iterator[g.GuestRam]:
    r = g.GuestRam()
    yield r
    r.close()


@pytest.fixture
def vm(ram: g.GuestRam) -> Iterator[kvm.KvmVm]:
    kvm.install_kick_handler()
    v = kvm.KvmAccelerator(irqchip=True).create_vm()
    v.map_memory(0, ram.size, ram.addr)
    yield v
    v.close()


def _vcpu(vm: kvm.KvmVm, ram: g.GuestRam, code: bytes) -> kvm.KvmVcpu:
    ram.write(g.CODE_GPA, code)
    vcpu = vm.create_vcpu(0)
    vcpu.set_state(g.real_mode_state())
    return vcpu


def _ioapic_state(vm: kvm.KvmVm) -> bytes:
    chip = ki.get_irqchip(vm.fd, ki.KVM_IRQCHIP_IOAPIC)
    return ctypes.string_at(ctypes.addressof(chip), ctypes.sizeof(chip))


def test_irqchip_vm_has_interrupt_controller_and_multiprocessor_vcpus(vm: kvm.KvmVm) -> None:
    assert interrupt_controller(vm) is vm
    assert vm.ioapic_pins == 24
    assert multiprocessor_vcpu(vm.create_vcpu(0)) is not None


def test_without_irqchip_there_is_no_interrupt_controller() -> None:
    plain = kvm.KvmAccelerator().create_vm()
    try:
        assert interrupt_controller(plain) is None
        vcpu = plain.create_vcpu(0)
        assert multiprocessor_vcpu(vcpu) is None
        with pytest.raises(RuntimeError):
            plain.set_ioapic_line(4, True)
        with pytest.raises(RuntimeError):
            vcpu.power_on(wait_for_sipi=False)
    finally:
        plain.close()


@pytest.mark.parametrize("pin", [-1, 24])
def test_set_ioapic_line_rejects_pins_outside_kvms_24(vm: kvm.KvmVm, pin: int) -> None:
    with pytest.raises(ValueError):
        vm.set_ioapic_line(pin, True)


def test_set_pic_line_rejects_pin_16(vm: kvm.KvmVm) -> None:
    with pytest.raises(ValueError):
        vm.set_pic_line(16, True)


def test_msi_to_a_software_disabled_local_apic_is_not_accepted(vm: kvm.KvmVm) -> None:
    vm.create_vcpu(0)  # its local APIC is as after reset: SVR bit 8 clear
    assert vm.signal_msi(0xFEE00000, 0x40) is False


def test_reset_interrupt_controllers_restores_the_power_on_ioapic(vm: kvm.KvmVm) -> None:
    before = _ioapic_state(vm)
    chip = ki.get_irqchip(vm.fd, ki.KVM_IRQCHIP_IOAPIC)
    raw = (ctypes.c_uint8 * ctypes.sizeof(chip)).from_buffer(chip)
    raw[8 + 24 + 5 * 8] = 0x35  # RTE 5: vector 0x35
    raw[8 + 24 + 5 * 8 + 2] = 0  # unmasked
    ki.set_irqchip(vm.fd, chip)
    vm.set_ioapic_line(7, True)
    assert _ioapic_state(vm) != before
    vm.reset_interrupt_controllers()
    assert _ioapic_state(vm) == before


def test_cli_hlt_is_reported_as_halt_exit_with_the_irqchip(vm: kvm.KvmVm, ram: g.GuestRam) -> None:
    vcpu = _vcpu(vm, ram, g.CLI_HLT)
    assert vcpu.run() == HaltExit(False)
    assert vcpu.get_state().rip == g.CODE_GPA + 2


def test_set_state_makes_a_halted_vcpu_active_again(vm: kvm.KvmVm, ram: g.GuestRam) -> None:
    vcpu = _vcpu(vm, ram, g.CLI_HLT)
    assert vcpu.run() == HaltExit(False)
    vcpu.set_state(g.real_mode_state())  # ACRN: activity state "active" at VM entry
    assert ki.get_mp_state(vcpu._fd) == ki.KVM_MP_STATE_RUNNABLE
    assert vcpu.run() == HaltExit(False)


def test_sti_hlt_sleeps_in_the_kernel_until_kicked(vm: kvm.KvmVm, ram: g.GuestRam) -> None:
    vcpu = _vcpu(vm, ram, g.STI_HLT)
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(vcpu.run()))
    t.start()
    # Wait until a halt probe has looked at the sleeping vCPU and let it sleep on (a re-entry).
    deadline = time.monotonic() + JOIN_TIMEOUT
    while vcpu._entries < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert vcpu._entries >= 2 and result == []
    vcpu.kick()
    t.join(JOIN_TIMEOUT)
    assert result == [KickExit()]


def test_close_stops_the_halt_probe_thread(ram: g.GuestRam) -> None:
    v = kvm.KvmAccelerator(irqchip=True).create_vm()
    v.create_vcpu(0)
    probe = v._probe_thread
    assert probe is not None and probe.is_alive()
    v.close()
    assert not probe.is_alive()
