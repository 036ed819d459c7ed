"""acrn.uapi is byte-for-byte the C header: sizes, offsets and ioctl numbers compiled with gcc.

A C probe is generated from the Python definitions themselves (every struct, every field, every
ioctl), compiled against the system's <linux/acrn.h>, and its output compared with ctypes.  So a
field added, renamed or moved on either side fails here.
"""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import pytest

from acrn import uapi
from cprobe import CProbe

HEADER = Path("/usr/include/linux/acrn.h")
pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or not HEADER.exists(),
    reason="needs gcc and <linux/acrn.h> (Debian package linux-libc-dev)",
)

# Fields that exist only on the Python side (documented in acrn.uapi's docstring).
PY_ONLY = frozenset({"_align_pad"})
#: aligned(256) cannot be expressed by ctypes (see acrn.uapi); their sizes and offsets still match.
ALIGNED_256 = ("acrn_io_request", "acrn_io_request_buffer")


def _probe() -> CProbe:
    probe = CProbe("linux/ioctl.h", "linux/acrn.h")  # acrn.h uses _IOW & co. without including them
    for st in uapi.STRUCTS:
        probe.struct(st, alignment=st.__name__ not in ALIGNED_256, skip=PY_ONLY)
    for name, value in uapi.IOCTLS.items():
        probe.emit(f"ioctl.{name}", name, value)
    consts = [
        n
        for n in dir(uapi)
        if n.startswith(
            ("ACRN_IOREQ_", "ACRN_MEM_", "ACRN_MEMMAP_", "ACRN_PTDEV_", "ACRN_IOEVENTFD_", "ACRN_IRQFD_")
        )
        or n in ("ACRN_IO_REQUEST_MAX", "ACRN_MMIODEV_RES_NUM", "ACRN_PCI_NUM_BARS", "PMCMD_TYPE_MASK")
        or n.startswith("ACRN_PMCMD_")
    ]
    for n in consts:
        probe.emit(f"const.{n}", n, getattr(uapi, n))
    return probe


def test_uapi_matches_c_header(tmp_path: Path) -> None:
    probe = _probe()
    got = probe.run(tmp_path)
    mismatches = probe.mismatches(got)
    assert not mismatches, "python != C: " + ", ".join(
        f"{k}: py {a} c {b}" for k, (a, b) in mismatches.items()
    )
    # The probe must have covered the whole header: every struct, every ioctl.
    assert sum(k.startswith("ioctl.") for k in probe.expected) == 27
    assert len(uapi.STRUCTS) == 22
    assert "offsetof.acrn_vm_memmap.u.vma_base" in got  # anonymous unions are reached by their C name


def test_every_header_struct_and_ioctl_is_defined() -> None:
    """Each `struct acrn_*` and `ACRN_IOCTL_*` named in the header has a Python counterpart."""
    import re

    text = HEADER.read_text()
    c_structs = set(re.findall(r"^struct (acrn_\w+) \{", text, re.M))
    c_ioctls = set(re.findall(r"#define\s+(ACRN_IOCTL_\w+)", text)) - {"ACRN_IOCTL_TYPE"}
    assert c_structs == {s.__name__ for s in uapi.STRUCTS}
    assert c_ioctls == set(uapi.IOCTLS)


def test_ioctl_argument_kind_known_for_every_ioctl() -> None:
    assert set(uapi.IOCTL_ARG) == set(uapi.IOCTLS.values())
    for cmd, kind in uapi.IOCTL_ARG.items():
        if isinstance(kind, type):
            assert uapi.ioc_size(cmd) == ctypes.sizeof(kind)
        elif kind is None:
            assert uapi.ioc_dir(cmd) == 0 and uapi.ioc_size(cmd) == 0


def test_structs_are_little_endian_explicitly() -> None:
    """The reviewer's first question: the encoding is little-endian by declaration, not by host."""
    regs = uapi.acrn_vcpu_regs()
    regs.vcpu_id = 0x0102
    regs.vcpu_regs.cr0 = 0x1122334455667788
    blob = bytes(regs)
    assert blob[0:2] == b"\x02\x01"
    assert blob[8 + 176 : 8 + 184] == bytes.fromhex("8877665544332211")
    for st in uapi.STRUCTS:
        assert issubclass(st, ctypes.LittleEndianStructure)


def test_hypercall_ids_follow_hc_id_macro() -> None:
    assert uapi.HC_CREATE_VM == 0x80000010
    assert uapi.HC_SET_VCPU_REGS == 0x80000016
    assert uapi.HC_VM_SET_MEMORY_REGIONS == 0x80000042
    assert uapi.HC_PM_GET_CPU_STATE == 0x80000080
    assert uapi.HC_DESTROY_VDEV == 0x8000005A
    assert all(v >> 24 == 0x80 for v in uapi.HYPERCALLS.values())
    assert len(set(uapi.HYPERCALLS.values())) == len(uapi.HYPERCALLS)


def test_irqline_and_pm_cmd_encodings() -> None:
    assert uapi.irqline_value(gsi=4, op=uapi.GSI_RAISING_PULSE) == (2 << 32) | 4
    assert uapi.pm_cmd(vmid=3, vcpu_id=1, state_num=2, cmd_type=uapi.ACRN_PMCMD_GET_CX_DATA) == 0x03010203
