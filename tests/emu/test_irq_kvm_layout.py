"""acrn.emu.accel.kvm_irq is byte-for-byte <linux/kvm.h>: sizes, offsets, ioctl numbers, constants.

The same method as test_kvm_layout.py: a C probe generated from the Python definitions is compiled
with gcc against the system header and its output compared with the Python values.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from acrn.emu.accel import kvm_irq as ki
from cprobe import CProbe

HEADER = Path("/usr/include/linux/kvm.h")
pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or not HEADER.exists(),
    reason="needs gcc and <linux/kvm.h> (Debian package linux-libc-dev)",
)


def _probe() -> CProbe:
    probe = CProbe("linux/kvm.h")
    for st in ki.STRUCTS:
        probe.struct(st, alignment=False)
    for n, v in ki.IOCTLS.items():
        probe.emit(f"ioctl.{n}", n, v)
    for n, v in ki.CONSTANTS.items():
        probe.emit(f"const.{n}", n, v)
    return probe


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    return _probe().run(tmp_path_factory.mktemp("kvm_irq_probe"))


def test_every_value_matches_the_header(compiled: dict[str, int]) -> None:
    wrong = _probe().mismatches(compiled)
    assert not wrong, f"python vs C: {wrong}"


def test_the_probe_covers_the_ioctls_the_irqchip_uses() -> None:
    expected = _probe().expected
    for n in (
        "KVM_IRQ_LINE",
        "KVM_SIGNAL_MSI",
        "KVM_GET_MP_STATE",
        "KVM_SET_VCPU_EVENTS",
        "KVM_SET_GSI_ROUTING",
    ):
        assert f"ioctl.{n}" in expected
