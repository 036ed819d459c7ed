"""A complete ioreq loop in C, as acrn-dm runs it, through ``acrn exec``.

``clients/ioreq_loop.c`` attaches, scans every vCPU slot of the shared ioreq page for
PROCESSING requests, answers them and notifies.  Its real-mode guest does port I/O, MMIO and PCI
configuration accesses through CF8/CFC, and writes every value it read to port 0x1238, so the
values the guest got back are checked, not only the requests the client saw.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ACCELS, run_exec

EXPECTED = [
    "pio r 0x1234 4 0x12345678",
    "pio w 0x1238 4 0x12345678",  # the guest got the port value
    "pio w 0x1236 1 0x5a",
    "mmio r 0x20000 4 0xcafebabe",
    "pio w 0x1238 4 0xcafebabe",  # the guest got the MMIO value
    "mmio w 0x20008 2 0xbeef",
    "pci r 00:03.0 0 4 0xabcd8086",  # CF8 = 0x80001800, then CFC: a PCICFG request, not port I/O
    "pio w 0x1238 4 0xabcd8086",  # the guest got the configuration value
    "pci w 00:03.0 0x10 4 0xfedc0000",
    "pio w 0x1238 4 0x80001810",  # CF8 itself stays in the kernel: read back as stored
    "pio w 0x1239 1 0xff",
    "done",
]


@pytest.mark.parametrize("accel", ACCELS)
def test_ioreq_loop_port_mmio_and_pci_config(
    accel: str, cclient: Callable[[str], Path], tmp_path: Path
) -> None:
    r = run_exec(accel, [str(cclient("ioreq_loop")), "ioreq-loop"], tmp_path)
    assert r.stdout.splitlines() == EXPECTED, r.stderr
