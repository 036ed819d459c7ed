"""Interrupts reaching a running guest: SET_IRQLINE, INJECT_MSI and the UART's line, on KVM's irqchip.

The guest is ``irq_count`` (an IDT, the 8259s, the IOAPIC and the local APIC set up; one output line
per interrupt).  To know that an operation produced *no* interrupt without sleeping, each step ends
with a marker MSI of vector 0x30: the lowest local-APIC vector the guest uses, so the local APIC
delivers it after any other pending vector (and KVM delivers 8259 interrupts before local-APIC
ones), and both SET_IRQLINE and INJECT_MSI are synchronous up to the interrupt controllers.

The soft accelerator has no interrupt controllers (documented in acrn.emu.irq; see test_irq.py).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from acrn import HsmError, uapi
from acrn.device import EmulatedDevice
from acrn.dm.vmm import RunResult, VmSession
from acrn.emu.machine import Machine
from acrn.guests import GUESTS, IRQ_COUNT_ACK_PORT, IRQ_COUNT_STOP_VECTOR

pytestmark = pytest.mark.kvm

# The VM runs on pCPUs 1 and 2, so its BSP's APIC ID is 1 and the AP's 2 (ACRN's vlapic_init gives
# each vLAPIC its pCPU's LAPIC ID).
AFFINITY = 0b0110
BSP_APIC_ID = 1
MSI_ADDR = 0xFEE00000 | (BSP_APIC_ID << 12)  # destination: the BSP, physical
MARKER = 0x30
TIMEOUT = 30.0
_LINE = re.compile(r"V=0x([0-9A-F]{8}) N=0x([0-9A-F]{8})")


class Console:
    """The guest's UART output, with a wait for text to appear (no sleeps)."""

    def __init__(self) -> None:
        self.text = ""
        self.cond = threading.Condition()

    def __call__(self, data: bytes) -> None:
        with self.cond:
            self.text += data.decode(errors="replace")
            self.cond.notify_all()

    def wait_for(self, pattern: str, start: int = 0) -> int:
        """Wait until ``pattern`` appears at or after ``start``; the index just past it."""
        with self.cond:
            ok = self.cond.wait_for(lambda: self.text.find(pattern, start) >= 0, TIMEOUT)
            assert ok, f"the guest never printed {pattern!r}; output: {self.text!r}"
            return self.text.find(pattern, start) + len(pattern)

    def vectors(self, start: int = 0, end: int | None = None) -> list[int]:
        return [int(m.group(1), 16) for m in _LINE.finditer(self.text[start:end])]


class AckDevice:
    """The level-triggered device at IRQ_COUNT_ACK_PORT: lowers GSI ``gsi`` on the n-th acknowledge."""

    def __init__(self, lower: Callable[[], None], lower_on: int) -> None:
        self.lower = lower
        self.lower_on = lower_on
        self.acks = 0

    def read(self, offset: int, size: int) -> int:
        self.acks += 1
        if self.acks == self.lower_on:
            self.lower()
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        pass


@dataclass
class IrqGuest:
    session: VmSession
    console: Console
    result: list[RunResult]
    thread: threading.Thread

    def step(self, action: Callable[[], object]) -> list[int]:
        """Run ``action``, then the marker; the vectors the guest received in between (marker excluded)."""
        start = len(self.console.text)
        action()
        self.session.vm.inject_msi(MSI_ADDR, MARKER)
        end = self.console.wait_for(f"V=0x{MARKER:08X}", start)
        return [v for v in self.console.vectors(start, end) if v != MARKER]

    def irqline(self, gsi: int, op: int) -> list[int]:
        return self.step(lambda: self.session.vm.set_irqline(gsi, op))

    def stop(self) -> RunResult:
        self.session.vm.inject_msi(MSI_ADDR, IRQ_COUNT_STOP_VECTOR)
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        return self.result[0]


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = Machine(accel="kvm")
    yield m
    m.runtime.close()


def start_guest(machine: Machine, *, fast: bool = False, ack_lower_on: int = 1) -> IrqGuest:
    g = GUESTS["irq_count"]
    console = Console()
    s = VmSession(
        mem_size=g.mem_size, device=EmulatedDevice(machine), accel="kvm", console=console, fast_path=fast,
        cpu_affinity=AFFINITY,
    )  # fmt: skip
    s.load(g.load_gpa, g.image())
    s.set_regs(g.regs())
    ack = AckDevice(lambda: s.vm.set_irqline(6, uapi.GSI_SET_LOW), ack_lower_on)
    s.bus.register_pio(IRQ_COUNT_ACK_PORT, 1, ack)
    result: list[RunResult] = []
    t = threading.Thread(target=lambda: result.append(s.run(timeout=TIMEOUT)), name="irq-guest-run")
    t.start()
    console.wait_for("READY\n")
    return IrqGuest(s, console, result, t)


@pytest.fixture
def guest(machine: Machine) -> Iterator[IrqGuest]:
    gst = start_guest(machine)
    yield gst
    if gst.thread.is_alive():
        gst.stop()
    gst.session.close()


# ---- SET_IRQLINE on an edge-triggered IOAPIC pin (pin 5 -> vector 0x35), hcall_set_irqline--------------
@pytest.mark.parametrize(
    ("before", "op", "interrupts"),
    [
        ([], uapi.GSI_RAISING_PULSE, 1),
        ([], uapi.GSI_FALLING_PULSE, 1),  # low, then the rising edge to high
        ([], uapi.GSI_SET_HIGH, 1),
        ([], uapi.GSI_SET_LOW, 0),
        ([uapi.GSI_SET_HIGH], uapi.GSI_SET_HIGH, 0),  # no edge: the line was already high
        ([uapi.GSI_SET_HIGH], uapi.GSI_FALLING_PULSE, 1),
        ([uapi.GSI_SET_HIGH], uapi.GSI_RAISING_PULSE, 0),
        ([uapi.GSI_FALLING_PULSE], uapi.GSI_FALLING_PULSE, 1),
        ([], 7, 0),  # unknown operation: succeeds, does nothing
    ],
    ids=[
        "raising_pulse",
        "falling_pulse",
        "set_high",
        "set_low",
        "set_high_when_high",
        "falling_pulse_when_high",
        "raising_pulse_when_high",
        "falling_pulse_twice",
        "unknown_op",
    ],
)
def test_set_irqline_edge_pin_interrupts_on_each_rising_edge(
    guest: IrqGuest, before: list[int], op: int, interrupts: int
) -> None:
    for b in before:
        guest.irqline(5, b)
    assert guest.irqline(5, op) == [0x35] * interrupts


# Level-triggered pin 6 -> vector 0x36.  This machine's KVM delivers a level-triggered IOAPIC vector
# once more after the line went low and the guest sent its EOI (seen with the KVM accelerator alone,
# without the ACRN layers; KVM's IOAPIC state shows IRR and remote IRR clear by then, while the local
# APIC, read inside the first handler, still has the vector in IRR and not in ISR: the PVM host's
# interrupt acknowledge, not the routing), so these tests bound the count instead of asserting it.
LEVEL_EXTRA = 1


def test_set_irqline_level_pin_stops_interrupting_once_the_device_lowers_the_line(guest: IrqGuest) -> None:
    got = guest.irqline(6, uapi.GSI_SET_HIGH)
    assert set(got) == {0x36} and 1 <= len(got) <= 1 + LEVEL_EXTRA
    assert guest.irqline(6, uapi.GSI_SET_LOW) == []
    assert guest.irqline(6, uapi.GSI_SET_LOW) == []  # the line stays low: nothing more


def test_set_irqline_level_pin_redelivers_while_the_line_stays_high(machine: Machine) -> None:
    gst = start_guest(machine, ack_lower_on=3)  # the device drops the line at its third acknowledge
    try:
        got = gst.irqline(6, uapi.GSI_SET_HIGH)
        assert set(got) == {0x36} and 3 <= len(got) <= 3 + LEVEL_EXTRA
    finally:
        gst.stop()
        gst.session.close()


def test_set_irqline_gsi_2_reaches_pic_irq_0(guest: IrqGuest) -> None:
    # The guest unmasked PIC IRQ 0 (vector 0x20) and left IOAPIC pin 2 masked.
    assert guest.irqline(2, uapi.GSI_RAISING_PULSE) == [0x20]


def test_set_irqline_gsi_3_reaches_pic_irq_3(guest: IrqGuest) -> None:
    assert guest.irqline(3, uapi.GSI_RAISING_PULSE) == [0x23]


def test_set_irqline_gsi_0_reaches_pic_irq_0_too(guest: IrqGuest) -> None:
    assert guest.irqline(0, uapi.GSI_RAISING_PULSE) == [0x20]


def test_set_irqline_on_masked_pic_and_ioapic_pins_delivers_nothing(guest: IrqGuest) -> None:
    # GSI 7: PIC IRQ 7 masked in the IMR, IOAPIC pin 7 masked in its RTE.
    assert guest.irqline(7, uapi.GSI_RAISING_PULSE) == []


def test_set_irqline_gsi_beyond_kvms_24_ioapic_pins_succeeds_and_delivers_nothing(guest: IrqGuest) -> None:
    assert guest.irqline(30, uapi.GSI_RAISING_PULSE) == []  # ACRN accepts GSI < 48 (documented)


def test_set_irqline_gsi_48_fails(guest: IrqGuest) -> None:
    with pytest.raises(HsmError) as e:
        guest.session.vm.set_irqline(48, uapi.GSI_SET_HIGH)
    assert e.value.errno == 1


# ---- INJECT_MSI (vlapic_inject_msi)
# ---------------------------------------------------------------------------
def test_inject_msi_vector_comes_from_data_bits_7_0(guest: IrqGuest) -> None:
    assert guest.step(lambda: guest.session.vm.inject_msi(MSI_ADDR, 0x37)) == [0x37]


def test_inject_msi_destination_comes_from_address_bits_19_12(guest: IrqGuest) -> None:
    # APIC ID 2 is an AP that never started (its local APIC is software-disabled), APIC ID 0 is the
    # Service VM's pCPU (no vCPU of this VM): the BSP gets nothing from either.
    base = 0xFEE00000
    assert guest.step(lambda: guest.session.vm.inject_msi(base | (2 << 12), 0x37)) == []
    assert guest.step(lambda: guest.session.vm.inject_msi(base | (0 << 12), 0x37)) == []
    assert guest.step(lambda: guest.session.vm.inject_msi(base | (BSP_APIC_ID << 12), 0x37)) == [0x37]


def test_inject_msi_trigger_bit_is_ignored_edge_always(guest: IrqGuest) -> None:
    assert guest.step(lambda: guest.session.vm.inject_msi(MSI_ADDR, 0xC037)) == [0x37]


def test_inject_msi_outside_0xfee_fails_and_delivers_nothing(guest: IrqGuest) -> None:
    def bad() -> None:
        with pytest.raises(HsmError) as e:
            guest.session.vm.inject_msi(0xFED00000, 0x37)
        assert e.value.errno == 1  # hypervisor -1 -> EPERM (docs/ioctls.md)

    assert guest.step(bad) == []


# ---- the UART's line (COM1, GSI 4 -> IOAPIC pin 4 -> vector 0x34) ------------------------------------
def test_uart_received_data_interrupt_reaches_the_guest(guest: IrqGuest) -> None:
    assert guest.step(lambda: guest.session.uart.feed(b"Z")) == [0x34]
    assert "RX=0x0000005A\n" in guest.console.text
    assert not guest.session.uart.irq_level  # the handler read RBR, the line went low again


def test_uart_interrupt_on_the_fast_path(machine: Machine) -> None:
    gst = start_guest(machine, fast=True)
    try:
        assert gst.step(lambda: gst.session.uart.feed(b"q")) == [0x34]
        assert "RX=0x00000071\n" in gst.console.text
    finally:
        gst.stop()
        gst.session.close()


# ---- HLT with an irqchip -----------------------------------------------------------------------------
def test_cli_hlt_still_ends_the_vm_with_the_irqchip(guest: IrqGuest) -> None:
    guest.irqline(5, uapi.GSI_RAISING_PULSE)
    result = guest.stop()
    assert result.reason == "halt", result.summary()
    assert result.status == 0
    assert "TOTAL=0x00000003\n" in result.output.decode()  # 0x35, the marker, the stop vector


def test_sti_hlt_waits_for_interrupts_instead_of_ending_the_vm(guest: IrqGuest) -> None:
    # The guest sat in sti; hlt since READY; several halt probes have passed over it by now.
    for _ in range(3):
        assert guest.irqline(5, uapi.GSI_RAISING_PULSE) == [0x35]
    assert guest.thread.is_alive()


def test_inject_msi_delivery_mode_comes_from_data_bits_10_8(guest: IrqGuest) -> None:
    # Delivery mode 4 (NMI): the vector field is ignored and the guest takes vector 2.
    guest.session.vm.inject_msi(MSI_ADDR, (4 << 8) | 0x37)
    guest.thread.join(TIMEOUT)
    result = guest.result[0]
    assert "EXC=0x00000002\n" in result.output.decode()  # irq_count halts on any exception
    assert result.reason == "halt"


def test_irqfd_signal_reaches_the_guest_as_its_msi(guest: IrqGuest) -> None:
    # irqfd.c: a signalled irqfd makes the HSM issue HC_INJECT_MSI with the bound address/data.
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        guest.session.vm.irqfd(efd, MSI_ADDR, 0x38)
        start = len(guest.console.text)
        os.eventfd_write(efd, 1)
        guest.console.wait_for("V=0x00000038", start)
        guest.session.vm.irqfd(efd, MSI_ADDR, 0x38, deassign=True)
    finally:
        os.close(efd)
