"""Who owns the PIT (``Platform.pit_owner``, docs/differences.md "The PIT").

ACRN v3.3 gives a post-launched VM no PIT: ports 0x40-0x43 and 0x61 are the device model's
(acrn-dm: hw/platform/pit.c registers them).  pyacrn's default keeps KVM's in-kernel PIT, which
absorbs those ports; ``pit_owner="device-model"`` removes it so that they become ioreqs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from acrn.device import EmulatedDevice
from acrn.dm.vmm import VmSession
from acrn.emu.machine import Machine
from acrn.emu.platform import Platform
from acrn.guests import GUESTS

# Program PIT channel 0 (mode 2, LSB then MSB of 11932: 100 Hz) the way Linux's
# setup_pit_timer does, read the port-0x61 status, report it on port 0x80, set the channel-2
# gate, then stop:
#   mov al,0x34; out 0x43,al; mov al,0x9c; out 0x40,al; mov al,0x2e; out 0x40,al
#   in al,0x61; out 0x80,al; mov al,0x01; out 0x61,al; cli; hlt
PIT_CODE = bytes.fromhex("b034e643b09ce640b02ee640e461e680b001e661faf4")
STATUS_FROM_DM = 0x20  # what the test's port-0x61 device answers (OUT2 high, as acrn-dm's vpit)


class PortLog:
    """A bus device recording every access as (kind, offset, value)."""

    def __init__(self, read_value: int = 0) -> None:
        self.read_value = read_value
        self.log: list[tuple[str, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.log.append(("in", offset, self.read_value))
        return self.read_value

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("out", offset, value))


def _machine(owner: str) -> Machine:
    platform = dataclasses.replace(Platform.default(), pit_owner=owner)
    return Machine(platform, accel="kvm")


@pytest.fixture
def run_pit_guest(no_leaks: None) -> Iterator[object]:
    machines: list[Machine] = []

    def run(owner: str) -> tuple[PortLog, PortLog, PortLog]:
        machine = _machine(owner)
        machines.append(machine)
        g = GUESTS["io_loop"]  # its 32-bit GDT and register state; the code at `start` is replaced
        image = bytearray(g.image())
        start = g.symbols()["start"] - g.load_gpa
        image[start : start + len(PIT_CODE)] = PIT_CODE
        pit, port61, report = PortLog(), PortLog(STATUS_FROM_DM), PortLog()
        with VmSession(
            mem_size=g.mem_size, device=EmulatedDevice(machine), accel=machine.runtime.accel_name
        ) as s:
            s.load(g.load_gpa, bytes(image))
            s.set_regs(g.regs())
            # The session's own PIT exactly when the device model owns it; a log replaces it here.
            assert (s.pit is not None) == (owner == "device-model")
            if s.pit is not None:
                s.bus.unregister_pio(0x40)
                s.bus.unregister_pio(0x61)
            s.bus.register_pio(0x40, 4, pit)
            s.bus.register_pio(0x61, 1, port61)
            s.bus.register_pio(0x80, 1, report)
            r = s.run(timeout=60)
        assert r.reason == "halt", r.summary()
        return pit, port61, report

    yield run
    for m in machines:
        m.runtime.close()
        assert m.hv.vms() == [] and m.runtime.vms == {}


def test_platform_default_keeps_the_pit_in_kvm() -> None:
    assert Platform.default().pit_owner == "hypervisor-kvm"


def test_platform_rejects_an_unknown_pit_owner() -> None:
    with pytest.raises(ValueError, match="pit_owner 'qemu'"):
        dataclasses.replace(Platform.default(), pit_owner="qemu")  # type: ignore[arg-type]


@pytest.mark.kvm
def test_pit_ports_reach_the_device_model_when_it_owns_the_pit(run_pit_guest: object) -> None:
    pit, port61, report = run_pit_guest("device-model")  # type: ignore[operator]
    # 0x43 is offset 3 of the 0x40 range: the control word, then the two count bytes.
    assert pit.log == [("out", 3, 0x34), ("out", 0, 0x9C), ("out", 0, 0x2E)]
    assert port61.log == [("in", 0, STATUS_FROM_DM), ("out", 0, 0x01)]
    assert report.log == [("out", 0, STATUS_FROM_DM)]


@pytest.mark.kvm
def test_pit_ports_are_absorbed_by_kvm_when_the_hypervisor_owns_the_pit(run_pit_guest: object) -> None:
    pit, port61, report = run_pit_guest("hypervisor-kvm")  # type: ignore[operator]
    # KVM's in-kernel i8254 and its SPEAKER_DUMMY port 0x61 answer without an exit.
    assert pit.log == [] and port61.log == []
    # Port 0x61 as KVM builds it (linux arch/x86/kvm/i8254.c: speaker_ioport_read): gate 2 (bit 0)
    # is clear after reset and bits 7:6 are never set, unlike an unclaimed port's 0xFF; the
    # refresh-clock bit 4 and OUT2 (bit 5, high once 65536 ticks have passed) depend on time.
    assert len(report.log) == 1
    assert report.log[0][2] & 0xC1 == 0


def test_pit_owner_reaches_a_wrapped_kvm_accelerator() -> None:
    from acrn.emu.accel.fallback import FallbackAccelerator, HybridAccelerator
    from acrn.emu.accel.kvm import KvmAccelerator
    from acrn.emu.runtime import _apply_pit_owner

    for wrapper in (FallbackAccelerator, HybridAccelerator):
        kvm = KvmAccelerator(irqchip=True)
        _apply_pit_owner(wrapper(kvm, syscall_repair=False), "device-model")
        assert kvm.pit is False
        _apply_pit_owner(wrapper(kvm, syscall_repair=False), "hypervisor-kvm")
        assert kvm.pit is True


# Linux's PIT calibration loop (arch/x86/kernel/tsc.c: pit_calibrate_tsc), reduced: gate 2 on and
# speaker off through port 0x61, channel 2 in mode 0 with 1193 ticks (1 ms), poll port 0x61 until
# OUT2 (bit 5) rises, report the last port-0x61 value on port 0x80, halt.
#   in al,0x61; and al,0xfd; or al,1; out 0x61,al; mov al,0xb0; out 0x43,al
#   mov al,0xa9; out 0x42,al; mov al,4; out 0x42,al
#   1: in al,0x61; test al,0x20; jz 1b; out 0x80,al; cli; hlt
CALIBRATE_CODE = bytes.fromhex("e46124fd0c01e661b0b0e643b0a9e642b004e642e461a82074fae680faf4")


@pytest.mark.kvm
def test_linux_style_pit_calibration_runs_on_the_sessions_i8254(no_leaks: None) -> None:
    from acrn.dm.devices.i8254 import I8254

    machine = _machine("device-model")
    try:
        g = GUESTS["io_loop"]
        image = bytearray(g.image())
        start = g.symbols()["start"] - g.load_gpa
        image[start : start + len(CALIBRATE_CODE)] = CALIBRATE_CODE
        report = PortLog()
        with VmSession(
            mem_size=g.mem_size, device=EmulatedDevice(machine), accel=machine.runtime.accel_name
        ) as s:
            s.load(g.load_gpa, bytes(image))
            s.set_regs(g.regs())
            assert isinstance(s.pit, I8254)
            s.bus.register_pio(0x80, 1, report)
            r = s.run(timeout=60)
        assert r.reason == "halt", r.summary()
        # Gate 2 on, OUT2 high: the count ran out in the device model's PIT.
        assert len(report.log) == 1 and report.log[0][2] & 0x21 == 0x21
    finally:
        machine.runtime.close()


def test_session_pit_owner_sets_the_platform_and_attaches_the_pit(no_leaks: None) -> None:
    machine = Machine()
    with VmSession(device=EmulatedDevice(machine), pit_owner="device-model") as s:
        assert machine.platform.pit_owner == "device-model"
        assert s.pit is not None and {r.start for r in s.bus.pio_ranges()} >= {0x40, 0x61}
    with VmSession(device=EmulatedDevice(machine), pit_owner="hypervisor-kvm") as s:
        assert s.pit is None and 0x40 not in {r.start for r in s.bus.pio_ranges()}
    with pytest.raises(ValueError, match="pit_owner 'kvm'"):
        VmSession(device=EmulatedDevice(machine), pit_owner="kvm")
    machine.runtime.close()
