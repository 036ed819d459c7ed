"""MSRs of a KVM vCPU: the boot MSR table and ``KVM_SET_MSRS`` / ``KVM_GET_MSRS``."""

from __future__ import annotations

import ctypes
import errno
import struct
from typing import Final

from acrn.emu.accel import kvm_abi as abi
from acrn.emu.accel.kvm_sys import kvm_ioctl

#: Firecracker's boot MSR list (``src/vmm/src/arch/x86_64/msr.rs: create_boot_msr_entries``): index -> value.
BOOT_MSRS: Final = {
    0x174: 0,  # IA32_SYSENTER_CS
    0x175: 0,  # IA32_SYSENTER_ESP
    0x176: 0,  # IA32_SYSENTER_EIP
    0xC0000081: 0,  # STAR
    0xC0000082: 0,  # LSTAR
    0xC0000083: 0,  # CSTAR
    0xC0000084: 0,  # SYSCALL_MASK
    0xC0000102: 0,  # KERNEL_GS_BASE
    0x10: 0,  # IA32_TSC
    0x1A0: 1,  # IA32_MISC_ENABLE: fast strings
    0x2FF: (1 << 11) | 6,  # IA32_MTRR_DEF_TYPE: MTRRs enabled, default write-back
}

_U32 = struct.Struct("<I")


def set_msrs(vcpu_fd: int, msrs: dict[int, int]) -> None:
    """``KVM_SET_MSRS``; KVM returns how many entries it wrote and stops at the first refusal,
    which is raised as OSError(EINVAL) naming that MSR."""
    head = ctypes.sizeof(abi.kvm_msrs)
    esz = ctypes.sizeof(abi.kvm_msr_entry)
    items = list(msrs.items())
    buf = bytearray(head + len(items) * esz)
    _U32.pack_into(buf, 0, len(items))
    for i, (index, value) in enumerate(items):
        struct.pack_into("<IIQ", buf, head + i * esz, index, 0, value)
    written = kvm_ioctl(vcpu_fd, "KVM_SET_MSRS", abi.KVM_SET_MSRS, buf)
    if written != len(items):
        index, value = items[written]
        raise OSError(errno.EINVAL, f"KVM_SET_MSRS refused MSR {index:#x} = {value:#x}")


def get_msrs(vcpu_fd: int, indices: list[int]) -> dict[int, int]:
    """``KVM_GET_MSRS``: the current value of each MSR KVM reports (those it refuses are left out)."""
    head = ctypes.sizeof(abi.kvm_msrs)
    esz = ctypes.sizeof(abi.kvm_msr_entry)
    buf = bytearray(head + len(indices) * esz)
    _U32.pack_into(buf, 0, len(indices))
    for i, index in enumerate(indices):
        struct.pack_into("<IIQ", buf, head + i * esz, index, 0, 0)
    got = kvm_ioctl(vcpu_fd, "KVM_GET_MSRS", abi.KVM_GET_MSRS, buf)
    return {indices[i]: struct.unpack_from("<Q", buf, head + i * esz + 8)[0] for i in range(got)}
