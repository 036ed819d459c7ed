"""Interrupt routing rules of acrn.emu.irq (``hcall_inject_msi``, ``hcall_set_irqline``,
``hypervisor/arch/x86/guest/vlapic.c: vlapic_inject_msi``).

Pure rules, with a recording interrupt controller in place of an accelerator; the same rules on a
running guest are in test_irq_guest.py.
"""

from __future__ import annotations

import pytest

from acrn import uapi
from acrn.emu.irq import (
    IrqRouter,
    MsiMessage,
    edge_msi_data,
    irqline_levels,
    is_msi_address,
    pic_pin,
)


class RecordingChip:
    """An InterruptController that records every call (24 IOAPIC pins, like KVM's)."""

    interrupt_controller = True
    ioapic_pins = 24

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def set_ioapic_line(self, pin: int, level: bool) -> None:
        self.calls.append(("ioapic", pin, level))

    def set_pic_line(self, pin: int, level: bool) -> None:
        self.calls.append(("pic", pin, level))

    def signal_msi(self, address: int, data: int) -> bool:
        self.calls.append(("msi", address, data))
        return True

    def reset_interrupt_controllers(self) -> None:
        self.calls.append(("reset",))


class NoChipVm:
    """An accelerator VM without interrupt controllers (the soft accelerator today)."""

    name = "nochip"


@pytest.fixture
def chip() -> RecordingChip:
    return RecordingChip()


@pytest.fixture
def router(chip: RecordingChip) -> IrqRouter:
    return IrqRouter(chip)  # type: ignore[arg-type]


# ---- SET_IRQLINE operations (hcall_set_irqline) --------------------------------------------------------
@pytest.mark.parametrize(
    ("op", "levels"),
    [
        (uapi.GSI_SET_HIGH, (True,)),
        (uapi.GSI_SET_LOW, (False,)),
        (uapi.GSI_RAISING_PULSE, (True, False)),
        (uapi.GSI_FALLING_PULSE, (False, True)),
    ],
    ids=["set_high", "set_low", "raising_pulse", "falling_pulse"],
)
def test_set_irqline_operation_drives_these_levels_in_order(op: int, levels: tuple[bool, ...]) -> None:
    assert irqline_levels(op) == levels


@pytest.mark.parametrize("op", [4, 5, 0xFFFFFFFF])
def test_set_irqline_unknown_operation_drives_nothing(
    router: IrqRouter, chip: RecordingChip, op: int
) -> None:
    router.irqline(5, op)
    assert irqline_levels(op) == ()
    assert chip.calls == []


def test_set_irqline_gsi_below_16_drives_pic_and_ioapic(router: IrqRouter, chip: RecordingChip) -> None:
    router.irqline(4, uapi.GSI_RAISING_PULSE)
    assert chip.calls == [("pic", 4, True), ("ioapic", 4, True), ("pic", 4, False), ("ioapic", 4, False)]


def test_set_irqline_gsi_2_drives_pic_irq_0(router: IrqRouter, chip: RecordingChip) -> None:
    router.irqline(2, uapi.GSI_SET_HIGH)
    assert chip.calls == [("pic", 0, True), ("ioapic", 2, True)]


def test_set_irqline_gsi_0_drives_pic_irq_0_and_ioapic_pin_0(router: IrqRouter, chip: RecordingChip) -> None:
    router.irqline(0, uapi.GSI_SET_HIGH)
    assert chip.calls == [("pic", 0, True), ("ioapic", 0, True)]


@pytest.mark.parametrize("gsi", [16, 23])
def test_set_irqline_gsi_16_and_above_drives_only_the_ioapic(
    router: IrqRouter, chip: RecordingChip, gsi: int
) -> None:
    router.irqline(gsi, uapi.GSI_SET_HIGH)
    assert chip.calls == [("ioapic", gsi, True)]


@pytest.mark.parametrize("gsi", [24, 47])
def test_set_irqline_gsi_beyond_the_accelerators_ioapic_is_dropped(
    router: IrqRouter, chip: RecordingChip, gsi: int
) -> None:
    # ACRN's vIOAPIC has 48 pins, KVM's 24: documented difference, no error.
    router.irqline(gsi, uapi.GSI_SET_HIGH)
    assert chip.calls == []


@pytest.mark.parametrize(
    ("gsi", "pin"), [(0, 0), (1, 1), (2, 0), (3, 3), (8, 8), (15, 15), (16, None), (47, None)]
)
def test_pic_pin_of_gsi(gsi: int, pin: int | None) -> None:
    assert pic_pin(gsi) == pin


# ---- INJECT_MSI encoding (vlapic_inject_msi) -----------------------------------------------------------
def test_msi_destination_comes_from_address_bits_19_12() -> None:
    assert MsiMessage.decode(0xFEE0_0000 | (0xA5 << 12), 0x30).dest_id == 0xA5


def test_msi_vector_comes_from_data_bits_7_0() -> None:
    assert MsiMessage.decode(0xFEE0_0000, 0x4000 | (0x3 << 8) | 0xEC).vector == 0xEC


def test_msi_delivery_mode_comes_from_data_bits_10_8() -> None:
    assert MsiMessage.decode(0xFEE0_0000, (0x5 << 8) | 0x30).delivery_mode == 5


def test_msi_destination_mode_is_address_bit_2_and_hint_bit_3() -> None:
    m = MsiMessage.decode(0xFEE0_0000 | (1 << 2), 0x30)
    assert (m.logical, m.redirection_hint) == (True, False)
    m = MsiMessage.decode(0xFEE0_0000 | (1 << 3), 0x30)
    assert (m.logical, m.redirection_hint) == (False, True)


@pytest.mark.parametrize(
    ("addr", "ok"), [(0xFEE00000, True), (0xFEEFF00C, True), (0xFED00000, False), (0, False)]
)
def test_msi_address_must_be_0xfee(addr: int, ok: bool) -> None:
    assert is_msi_address(addr) is ok


def test_msi_is_always_delivered_edge_triggered(router: IrqRouter, chip: RecordingChip) -> None:
    assert edge_msi_data(0xC030) == 0x4030
    router.msi(0xFEE01000, 0x8031)
    assert chip.calls == [("msi", 0xFEE01000, 0x0031)]


# ---- life cycle -------------------------------------------------------------------------------------
def test_levels_set_before_the_first_start_are_replayed(router: IrqRouter, chip: RecordingChip) -> None:
    router.replay({5: 1, 6: 0, 30: 1}, {5: 1, 0: 0})
    assert chip.calls == [("pic", 5, True), ("ioapic", 5, True)]


def test_reset_vm_resets_the_interrupt_controllers(router: IrqRouter, chip: RecordingChip) -> None:
    router.reset()
    assert chip.calls == [("reset",)]


def test_without_interrupt_controllers_nothing_is_delivered_and_nothing_fails() -> None:
    r = IrqRouter(NoChipVm())  # type: ignore[arg-type]
    assert not r.delivers
    r.irqline(4, uapi.GSI_SET_HIGH)
    assert r.msi(0xFEE00000, 0x30) is False
    r.replay({4: 1}, {4: 1})
    r.reset()


@pytest.mark.soft
def test_soft_accelerator_has_no_interrupt_controllers() -> None:
    # Documented limitation (acrn.emu.irq): guests needing interrupts or SMP need KVM.
    from acrn.emu.accel.soft import SoftAccelerator

    vm = SoftAccelerator().create_vm()
    try:
        assert not IrqRouter(vm).delivers
    finally:
        vm.close()
