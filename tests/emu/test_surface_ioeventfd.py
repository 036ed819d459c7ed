"""ioeventfd and irqfd on running guests, with real eventfds (``drivers/virt/acrn/ioeventfd.c``, ``irqfd.c``).

The ``ioevent_probe`` guest does what a virtio driver does to a queue-notify register: it reads the
port (reported to 0xE0), writes the queue index (CX) and another value (BX) to it, writes a byte
inside the register, then reads and writes the MMIO address the same way.  acrn-dm's ioreq loop
serves the VM, so "never reaches userspace" is checked on its bus counters.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from acrn import HsmError
from acrn.emu.machine import Machine
from acrn.guests import IOEVENT_MATCH, IOEVENT_MMIO, IOEVENT_OTHER, IOEVENT_PORT

from .hsm_support import HypercallSpy
from .surface_support import ACCELS, eventfd, eventfd_count, machine_fixture, session

machine = pytest.fixture(params=ACCELS)(machine_fixture)

P, M = IOEVENT_PORT, IOEVENT_MMIO
DONE = 0x600D


@pytest.fixture
def efd() -> Iterator[int]:
    fd = eventfd()
    yield fd
    os.close(fd)


def run_probe(machine: Machine, *ioeventfds: dict[str, object]) -> tuple[list[int], object]:
    """Run ioevent_probe with the given ioeventfds (keyword arguments of Vm.ioeventfd)."""
    s, reports = session(machine, "ioevent_probe")
    with s:
        for kw in ioeventfds:
            s.vm.ioeventfd(**kw)  # type: ignore[arg-type]
        result = s.run(timeout=30)
        assert result.reason == "halt", result.summary()
        return reports.values, s.bus


def test_without_ioeventfd_every_access_reaches_the_device_model(machine: Machine) -> None:
    values, bus = run_probe(machine)
    assert values == [0xFFFF, 0xFFFFFFFF, DONE]  # acrn-dm's all-ones for unclaimed reads
    assert bus.unhandled_pio_writes[P] == 2 and bus.unhandled_pio_writes[P + 1] == 1  # type: ignore[attr-defined]
    assert bus.unhandled_mmio_writes[M] == 2  # type: ignore[attr-defined]


def test_ioeventfd_matching_pio_write_signals_and_never_reaches_userspace(machine: Machine, efd: int) -> None:
    _, bus = run_probe(machine, dict(fd=efd, addr=P, length=2, pio=True, data=IOEVENT_MATCH))
    assert eventfd_count(efd) == 1
    assert bus.unhandled_pio_writes[P] == 0  # type: ignore[attr-defined]


def test_ioeventfd_read_in_registered_range_returns_0(machine: Machine, efd: int) -> None:
    values, bus = run_probe(
        machine,
        dict(fd=efd, addr=P, length=2, pio=True, data=IOEVENT_MATCH),
        dict(fd=efd, addr=M, length=4, pio=False),
    )
    assert values == [0, 0, DONE]  # answered in the kernel, not the all-ones of acrn-dm
    assert bus.unhandled_pio_reads[P] == 0 and bus.unhandled_mmio_reads[M] == 0  # type: ignore[attr-defined]


def test_ioeventfd_non_matching_write_is_dropped(machine: Machine, efd: int) -> None:
    # Data 7 is never written: both writes and the byte at P+1 are completed and dropped.
    values, bus = run_probe(machine, dict(fd=efd, addr=P, length=2, pio=True, data=7))
    assert eventfd_count(efd) == 0
    assert bus.unhandled_pio_writes[P] == 0 and bus.unhandled_pio_writes[P + 1] == 0  # type: ignore[attr-defined]
    assert values[-1] == DONE


def test_ioeventfd_write_inside_range_but_not_at_start_is_dropped(machine: Machine, efd: int) -> None:
    # Wildcard at P: both word writes signal; the byte write at P+1 matches no start address.
    _, bus = run_probe(machine, dict(fd=efd, addr=P, length=2, pio=True))
    assert eventfd_count(efd) == 2
    assert bus.unhandled_pio_writes[P + 1] == 0  # type: ignore[attr-defined]


def test_ioeventfd_range_shorter_than_the_access_does_not_catch_it(machine: Machine, efd: int) -> None:
    # Length 1 at P: a word access is not entirely inside [P, P], so it goes to the default client.
    values, bus = run_probe(machine, dict(fd=efd, addr=P, length=1, pio=True))
    assert eventfd_count(efd) == 0
    assert values[0] == 0xFFFF
    assert bus.unhandled_pio_writes[P] == 2 and bus.unhandled_pio_writes[P + 1] == 1  # type: ignore[attr-defined]


def test_ioeventfd_mmio_wildcard_signals_every_write(machine: Machine, efd: int) -> None:
    _, bus = run_probe(machine, dict(fd=efd, addr=M, length=4, pio=False))
    assert eventfd_count(efd) == 2
    assert bus.unhandled_mmio_writes[M] == 0  # type: ignore[attr-defined]
    assert bus.unhandled_pio_writes[P] == 2  # type: ignore[attr-defined]  # port I/O is another type


def test_ioeventfd_mmio_datamatch_compares_the_written_value(machine: Machine, efd: int) -> None:
    _, bus = run_probe(machine, dict(fd=efd, addr=M, length=4, pio=False, data=IOEVENT_OTHER))
    assert eventfd_count(efd) == 1
    assert bus.unhandled_mmio_writes[M] == 0  # type: ignore[attr-defined]


def test_ioeventfd_without_pio_flag_is_mmio_and_misses_the_port(machine: Machine, efd: int) -> None:
    # Flag PIO clear means MMIO: an entry "at" the port number does not catch port I/O.
    values, bus = run_probe(machine, dict(fd=efd, addr=P, length=2, pio=False))
    assert eventfd_count(efd) == 0
    assert values[0] == 0xFFFF and bus.unhandled_pio_writes[P] == 2  # type: ignore[attr-defined]


def test_ioeventfd_deassign_goes_by_eventfd_only(machine: Machine, efd: int) -> None:
    s, reports = session(machine, "ioevent_probe")
    with s:
        s.vm.ioeventfd(efd, P, 2, pio=True, data=IOEVENT_MATCH)
        # Another address, another type, no data: still removes the entry of this eventfd.
        s.vm.ioeventfd(efd, 0x1234, 4, pio=False, deassign=True)
        result = s.run(timeout=30)
        assert result.reason == "halt", result.summary()
        assert eventfd_count(efd) == 0
        assert reports.values[0] == 0xFFFF and s.bus.unhandled_pio_writes[P] == 2


def test_ioeventfd_on_pci_config_ports_catches_nothing(machine: Machine, efd: int) -> None:
    other = eventfd()
    try:
        s, reports = session(machine, "pci_probe")
        with s:
            s.vm.ioeventfd(efd, 0xCF8, 4, pio=True)
            s.vm.ioeventfd(other, 0xCFC, 4, pio=True)
            result = s.run(timeout=30)
            assert result.reason == "halt", result.summary()
        # The CF8/CFC combiner runs before client matching (acrn_ioreq_dispatch).
        assert eventfd_count(efd) == 0 and eventfd_count(other) == 0
        assert reports.values[0] == 0x12751275
    finally:
        os.close(other)


def test_ioeventfd_registered_while_running_takes_effect(machine: Machine, efd: int) -> None:
    s, _ = session(machine, "spin")
    with s:
        s.vm.create_ioreq_client()
        s.vm.start()
        s._started = True
        s.vm.ioeventfd(efd, P, 2, pio=True, data=IOEVENT_MATCH)
        assert machine.hv.vm(s.vm.vmid) is not None
        with pytest.raises(HsmError) as e:  # the conflict rule holds on a running VM too
            s.vm.ioeventfd(efd, P, 2, pio=True)
        assert e.value.errno == 17


def test_irqfd_signal_injects_msi_into_running_vm(machine: Machine, efd: int) -> None:
    s, _ = session(machine, "spin")
    with s:
        s.vm.create_ioreq_client()
        s.vm.start()
        s._started = True
        s.vm.irqfd(efd, 0xFEE00000, 0x45)
        spy = HypercallSpy(machine)
        os.eventfd_write(efd, 1)
        assert spy.event.wait(20)
        vm = machine.hv.vm(s.vm.vmid)
        assert vm is not None and vm.msis == [(0xFEE00000, 0x45)]
        s.vm.irqfd(efd, 0, 0, deassign=True)
        # After DEASSIGN the same eventfd can be bound again: no EBUSY.
        s.vm.irqfd(efd, 0xFEE00000, 0x46)
