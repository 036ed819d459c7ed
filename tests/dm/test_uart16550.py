"""Uart16550: one test per register rule, plus the probe and startup sequences of Linux's 8250 driver."""

from __future__ import annotations

import pytest

from acrn.dm.bus import IoBus
from acrn.dm.devices import uart16550 as u
from acrn.dm.devices.uart16550 import COM1_BASE, Uart16550


class Harness:
    """A UART on a bus at COM1, with its output and interrupt line recorded."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.irq_edges: list[bool] = []
        self.uart = Uart16550(output=self.out.extend, irq=self.irq_edges.append)
        self.bus = IoBus()
        self.uart.attach(self.bus)

    def rd(self, reg: int) -> int:
        return self.bus.pio_read(COM1_BASE + reg, 1)

    def wr(self, reg: int, value: int) -> None:
        self.bus.pio_write(COM1_BASE + reg, 1, value)


@pytest.fixture
def h() -> Harness:
    return Harness()


# ---------------------------------------------------------------------- reset values
def test_reset_values(h: Harness) -> None:
    assert h.rd(u.IER) == 0
    assert h.rd(u.IIR) == u.IIR_NO_INT
    assert h.rd(u.LCR) == 0x03
    assert h.rd(u.MCR) == u.MCR_OUT2
    assert h.rd(u.LSR) == 0x60
    assert h.rd(u.MSR) == u.MSR_DCD | u.MSR_DSR | u.MSR_CTS
    assert h.uart.divisor == 0x000C


def test_uart_claims_eight_ports(h: Harness) -> None:
    with pytest.raises(ValueError):
        h.bus.register_pio(COM1_BASE + 7, 1, Uart16550())
    h.bus.register_pio(COM1_BASE + 8, 1, Uart16550())


# ---------------------------------------------------------------------- THR / LSR
def test_thr_write_goes_to_output(h: Harness) -> None:
    for b in b"hi\n":
        h.wr(u.RBR, b)
    assert bytes(h.out) == b"hi\n"


def test_lsr_always_reports_thre_and_temt(h: Harness) -> None:
    h.wr(u.RBR, ord("x"))
    assert h.rd(u.LSR) & (u.LSR_THRE | u.LSR_TEMT) == 0x60


def test_lsr_dr_set_while_input_queued(h: Harness) -> None:
    assert not h.rd(u.LSR) & u.LSR_DR
    h.uart.feed(b"a")
    assert h.rd(u.LSR) & u.LSR_DR
    h.rd(u.RBR)
    assert not h.rd(u.LSR) & u.LSR_DR


def test_lsr_and_msr_are_read_only(h: Harness) -> None:
    h.wr(u.LSR, 0)
    h.wr(u.MSR, 0)
    assert h.rd(u.LSR) == 0x60
    assert h.rd(u.MSR) & 0xF0 == 0xB0


# ---------------------------------------------------------------------- receive
def test_rbr_returns_fed_bytes_in_order(h: Harness) -> None:
    h.uart.feed(b"ab")
    assert h.uart.rx_pending == 2
    assert [h.rd(u.RBR), h.rd(u.RBR)] == [ord("a"), ord("b")]


def test_rbr_read_with_empty_queue_returns_zero(h: Harness) -> None:
    assert h.rd(u.RBR) == 0


# ---------------------------------------------------------------------- DLAB
def test_dlab_maps_divisor_latch_over_rbr_and_ier(h: Harness) -> None:
    h.wr(u.LCR, 0x80 | 0x03)
    h.wr(u.RBR, 0x01)
    h.wr(u.IER, 0x02)
    assert h.rd(u.RBR) == 0x01
    assert h.rd(u.IER) == 0x02
    assert h.uart.divisor == 0x0201
    h.wr(u.LCR, 0x03)
    assert h.rd(u.IER) == 0  # IER itself was not written
    assert bytes(h.out) == b""  # nor was THR


# ---------------------------------------------------------------------- IER / IIR
def test_ier_keeps_only_low_nibble(h: Harness) -> None:
    h.wr(u.IER, 0xFF)
    assert h.rd(u.IER) == 0x0F


def test_enabling_thri_raises_thr_empty_interrupt(h: Harness) -> None:
    h.wr(u.IER, u.IER_THRI)
    assert h.rd(u.IIR) & 0x0F == u.IIR_THRI
    assert h.irq_edges == [True, False]  # raised on IER write, dropped by the IIR read


def test_reading_iir_clears_thr_empty_interrupt(h: Harness) -> None:
    h.wr(u.IER, u.IER_THRI)
    h.rd(u.IIR)
    assert h.rd(u.IIR) & 0x0F == u.IIR_NO_INT
    assert not h.uart.irq_level


def test_thr_write_makes_thr_empty_pending_again(h: Harness) -> None:
    h.wr(u.IER, u.IER_THRI)
    h.rd(u.IIR)
    h.wr(u.RBR, ord("x"))
    assert h.uart.irq_level
    assert h.rd(u.IIR) & 0x0F == u.IIR_THRI


def test_disabling_thri_drops_the_interrupt(h: Harness) -> None:
    h.wr(u.IER, u.IER_THRI)
    h.wr(u.IER, 0)
    assert not h.uart.irq_level
    assert h.rd(u.IIR) & 0x0F == u.IIR_NO_INT


def test_received_data_interrupt_when_rdi_enabled(h: Harness) -> None:
    h.wr(u.IER, u.IER_RDI)
    assert not h.uart.irq_level
    h.uart.feed(b"k")
    assert h.uart.irq_level
    assert h.rd(u.IIR) & 0x0F == u.IIR_RDI
    h.rd(u.RBR)
    assert not h.uart.irq_level


def test_no_interrupt_for_input_when_rdi_disabled(h: Harness) -> None:
    h.uart.feed(b"k")
    assert not h.uart.irq_level
    assert h.rd(u.IIR) & 0x0F == u.IIR_NO_INT


def test_received_data_has_priority_over_thr_empty(h: Harness) -> None:
    h.wr(u.IER, u.IER_RDI | u.IER_THRI)
    h.uart.feed(b"k")
    assert h.rd(u.IIR) & 0x0F == u.IIR_RDI
    h.rd(u.RBR)
    assert h.rd(u.IIR) & 0x0F == u.IIR_THRI  # THRI was still pending behind RDA


def test_modem_status_interrupt_on_msr_delta(h: Harness) -> None:
    h.wr(u.IER, u.IER_MSI)
    h.wr(u.MCR, u.MCR_LOOP)  # the mirrored lines drop: DCTS/DDSR/DDCD
    assert h.rd(u.IIR) & 0x0F == u.IIR_MSI
    h.rd(u.MSR)  # reading MSR clears the deltas
    assert h.rd(u.IIR) & 0x0F == u.IIR_NO_INT


def test_irq_callback_reports_only_level_changes(h: Harness) -> None:
    h.wr(u.IER, u.IER_RDI)
    h.uart.feed(b"a")
    h.uart.feed(b"b")
    h.rd(u.RBR)
    h.rd(u.RBR)
    assert h.irq_edges == [True, False]


# ---------------------------------------------------------------------- FCR
def test_iir_fifo_bits_follow_fcr_enable(h: Harness) -> None:
    assert h.rd(u.IIR) & 0xC0 == 0
    h.wr(u.IIR, u.FCR_ENABLE_FIFO)
    assert h.rd(u.IIR) == 0xC0 | u.IIR_NO_INT
    h.wr(u.IIR, 0)
    assert h.rd(u.IIR) & 0xC0 == 0


def test_fcr_clear_receiver_drops_queued_input(h: Harness) -> None:
    h.wr(u.IIR, u.FCR_ENABLE_FIFO)
    h.uart.feed(b"xyz")
    h.wr(u.IIR, u.FCR_ENABLE_FIFO | u.FCR_CLEAR_RCVR)
    assert h.uart.rx_pending == 0
    assert h.rd(u.IIR) & 0xC0 == 0xC0  # the clear bits are self-clearing, FIFO stays on


# ---------------------------------------------------------------------- MCR / MSR / loopback
def test_mcr_keeps_five_bits(h: Harness) -> None:
    h.wr(u.MCR, 0xFF)
    assert h.rd(u.MCR) == 0x1F


def test_loopback_mirrors_mcr_into_msr(h: Harness) -> None:
    h.wr(u.MCR, u.MCR_LOOP | u.MCR_DTR)
    assert h.rd(u.MSR) & 0xF0 == u.MSR_DSR
    h.wr(u.MCR, u.MCR_LOOP | u.MCR_RTS)
    assert h.rd(u.MSR) & 0xF0 == u.MSR_CTS
    h.wr(u.MCR, u.MCR_LOOP | u.MCR_OUT1)
    assert h.rd(u.MSR) & 0xF0 == u.MSR_RI
    h.wr(u.MCR, u.MCR_LOOP | u.MCR_OUT2)
    assert h.rd(u.MSR) & 0xF0 == u.MSR_DCD


def test_msr_delta_bits_set_on_change_and_cleared_by_read(h: Harness) -> None:
    h.wr(u.MCR, u.MCR_LOOP | u.MCR_RTS)
    first = h.rd(u.MSR)
    assert first & u.MSR_DCTS == 0  # CTS stayed 1 (connected -> mirrored RTS)
    assert first & u.MSR_DDSR and first & u.MSR_DDCD  # DSR and DCD dropped
    assert h.rd(u.MSR) & 0x0F == 0


def test_msr_teri_only_on_trailing_edge_of_ri(h: Harness) -> None:
    h.wr(u.MCR, u.MCR_LOOP | u.MCR_OUT1)
    h.rd(u.MSR)
    h.wr(u.MCR, u.MCR_LOOP)
    assert h.rd(u.MSR) & u.MSR_TERI
    h.wr(u.MCR, u.MCR_LOOP | u.MCR_OUT1)
    assert not h.rd(u.MSR) & u.MSR_TERI


def test_loopback_redirects_tx_into_rx(h: Harness) -> None:
    h.wr(u.MCR, u.MCR_LOOP)
    h.wr(u.RBR, 0x5A)
    assert bytes(h.out) == b""
    assert h.rd(u.LSR) & u.LSR_DR
    assert h.rd(u.RBR) == 0x5A


def test_leaving_loopback_restores_connected_modem_lines(h: Harness) -> None:
    h.wr(u.MCR, u.MCR_LOOP)
    h.wr(u.MCR, u.MCR_OUT2)
    assert h.rd(u.MSR) & 0xF0 == 0xB0


# ---------------------------------------------------------------------- SCR and misc
def test_scratch_register_holds_a_value(h: Harness) -> None:
    h.wr(u.SCR, 0xA5)
    assert h.rd(u.SCR) == 0xA5
    h.wr(u.SCR, 0x5A)
    assert h.rd(u.SCR) == 0x5A


def test_reset_restores_power_on_state(h: Harness) -> None:
    h.wr(u.IER, 0x0F)
    h.wr(u.LCR, 0x83)
    h.uart.feed(b"zz")
    h.uart.reset()
    assert h.rd(u.LCR) == 0x03 and h.rd(u.IER) == 0 and h.uart.rx_pending == 0


def test_output_sink_is_optional() -> None:
    bus = IoBus()
    Uart16550().attach(bus)
    bus.pio_write(COM1_BASE, 1, ord("x"))  # must not raise


# ---------------------------------------------------------------------- Linux 8250 sequences
def test_linux_autoconfig_probe_finds_a_16550a(h: Harness) -> None:
    """drivers/tty/serial/8250/8250_port.c autoconfig(), in order."""
    # IER test: 0 reads back 0, 0x0F reads back 0x0F.
    saved_ier = h.rd(u.IER)
    h.wr(u.IER, 0)
    assert h.rd(u.IER) & 0x0F == 0
    h.wr(u.IER, 0x0F)
    assert h.rd(u.IER) & 0x0F == 0x0F
    h.wr(u.IER, saved_ier)
    # Loopback test: MCR = LOOP | 0x0A (RTS|OUT2) must give MSR high nibble 0x90 (CTS|DCD).
    saved_mcr = h.rd(u.MCR)
    h.wr(u.MCR, u.MCR_LOOP | 0x0A)
    assert h.rd(u.MSR) & 0xF0 == 0x90
    h.wr(u.MCR, saved_mcr)
    # FIFO identification: EFR cleared through LCR 0xBF, then FCR = enable; IIR >> 6 == 3: 16550A.
    h.wr(u.LCR, 0xBF)
    h.wr(u.IIR, 0)
    h.wr(u.LCR, 0)
    h.wr(u.IIR, u.FCR_ENABLE_FIFO)
    assert h.rd(u.IIR) >> 6 == 3
    # autoconfig_16550a: the EFR probes read non-zero (no 16650), IIR bit 5 stays 0 with the
    # 64-byte FIFO bit (no 16750), and IER bit 6 does not stick (no XScale).
    h.wr(u.LCR, 0xBF)
    assert h.rd(u.IIR) != 0
    h.wr(u.LCR, 0)
    h.wr(u.IIR, u.FCR_ENABLE_FIFO | 0x20)
    assert (h.rd(u.IIR) >> 5) != 7
    h.wr(u.IER, 0x40)
    assert not h.rd(u.IER) & 0x40


def test_linux_startup_thre_test_sees_thri(h: Harness) -> None:
    """serial8250_do_startup(): enabling THRI twice must report a THR-empty interrupt, or Linux
    marks the port UART_BUG_THRE (and then never relies on the interrupt)."""
    h.wr(u.LCR, 0x03)
    h.wr(u.IER, u.IER_THRI)
    iir1 = h.rd(u.IIR)
    h.wr(u.IER, 0)
    h.wr(u.IER, u.IER_THRI)
    iir = h.rd(u.IIR)
    h.wr(u.IER, 0)
    assert not iir1 & u.IIR_NO_INT
    assert not iir & u.IIR_NO_INT


def test_early_console_polling_write(h: Harness) -> None:
    """earlyprintk: wait for LSR.THRE, then write THR, byte by byte."""
    for b in b"Linux version":
        while not h.rd(u.LSR) & u.LSR_THRE:
            pass
        h.wr(u.RBR, b)
    assert bytes(h.out) == b"Linux version"
