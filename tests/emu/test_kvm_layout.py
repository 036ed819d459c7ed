"""acrn.emu.accel.kvm_abi is byte-for-byte <linux/kvm.h>: sizes, offsets, ioctls and constants.

A C probe is generated from the Python definitions (every struct and field, every ioctl number,
every constant, every kvm_run offset the accelerator reads), compiled with gcc against the
system header, and its output compared with the Python values.  Public snippets often carry
wrong KVM numbers; this test is why none can hide here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from acrn.emu.accel import kvm_abi as abi
from cprobe import CProbe

HEADER = Path("/usr/include/linux/kvm.h")
pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or not HEADER.exists(),
    reason="needs gcc and <linux/kvm.h> (Debian package linux-libc-dev)",
)


def _probe() -> CProbe:
    probe = CProbe("linux/kvm.h")
    for st in abi.STRUCTS:
        probe.struct(st)
    probe.emit("sizeof.kvm_run", "sizeof(struct kvm_run)", abi.KVM_RUN_SIZE)
    for const, member, size in abi.RUN_FIELDS:
        probe.emit(f"offsetof.kvm_run.{member}", f"offsetof(struct kvm_run, {member})", getattr(abi, const))
        probe.emit(f"sizeof.kvm_run.{member}", f"sizeof(((struct kvm_run *)0)->{member})", size)
    for name, value in abi.IOCTLS.items():
        probe.emit(f"ioctl.{name}", name, value)
    for name, value in abi.CONSTANTS.items():
        probe.emit(f"const.{name}", name, value)
    return probe


@pytest.fixture(scope="module")
def c_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    return _probe().run(tmp_path_factory.mktemp("kvm_probe"))


def test_kvm_struct_layouts_match_header(c_values: dict[str, int]) -> None:
    wrong = _probe().mismatches(c_values, ("sizeof.", "offsetof.", "alignof."))
    assert not wrong, f"python != C: {wrong}"


def test_kvm_ioctl_numbers_match_header(c_values: dict[str, int]) -> None:
    wrong = _probe().mismatches(c_values, ("ioctl.",))
    assert not wrong, f"python != C: {wrong}"


def test_kvm_constants_match_header(c_values: dict[str, int]) -> None:
    wrong = _probe().mismatches(c_values, ("const.",))
    assert not wrong, f"python != C: {wrong}"


def test_kvm_run_offsets_match_header(c_values: dict[str, int]) -> None:
    wrong = _probe().mismatches(c_values, ("offsetof.kvm_run.", "sizeof.kvm_run"))
    assert not wrong, f"python != C: {wrong}"


def test_probe_covers_every_ioctl_the_accelerator_uses() -> None:
    # The accelerator refers to ioctls as abi.KVM_*; each must be in IOCTLS, hence probed.
    source = (Path(abi.__file__).parent / "kvm.py").read_text()
    used = set(re.findall(r"abi\.(KVM_[A-Z0-9_]+)", source))
    unprobed = {n for n in used if n not in abi.IOCTLS and n not in abi.CONSTANTS and n != "KVM_RUN_SIZE"}
    assert not unprobed, f"used but not checked against the header: {sorted(unprobed)}"


def test_spec_ioctl_numbers_spot_check() -> None:
    # Values computed from <linux/kvm.h> (include/uapi/linux/kvm.h) on x86-64.
    assert abi.KVM_CREATE_VM == 0xAE01
    assert abi.KVM_CREATE_VCPU == 0xAE41
    assert abi.KVM_SET_USER_MEMORY_REGION == 0x4020AE46
    assert abi.KVM_GET_SREGS == 0x8138AE83
    assert abi.KVM_SET_CPUID2 == 0x4008AE90
    assert abi.KVM_GET_SUPPORTED_CPUID == 0xC008AE05
