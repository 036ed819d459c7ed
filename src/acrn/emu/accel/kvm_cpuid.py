"""The CPUID a KVM vCPU gets: what this KVM supports, minus what it cannot run, plus ACRN's leaves.

CPUID is taken from ``KVM_GET_SUPPORTED_CPUID`` minus the features this machine's KVM cannot run
(CX16, XSAVE/OSXSAVE and the AVX family: README.md, "Booting Linux") and with ACRN's hypervisor
leaves (signature "ACRNACRNACRN", max leaf 0x40000010, TSC kHz in 0x40000010.EAX).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import threading
from typing import Final

from acrn.emu.accel import kvm_abi as abi
from acrn.emu.accel.kvm_sys import kvm_ioctl

# ACRN's hypervisor CPUID leaves (Linux Documentation/virt/acrn/cpuid.rst).
ACRN_CPUID_SIGNATURE: Final = 0x40000000
ACRN_CPUID_FEATURES: Final = 0x40000001
ACRN_CPUID_TIMING_INFO: Final = 0x40000010
ACRN_SIGNATURE: Final = b"ACRNACRNACRN"

# CPUID bits masked because this machine's KVM cannot execute them (cmpxchg16b and
# xrstor kill the guest with KVM_EXIT_INTERNAL_ERROR) - (leaf, subleaf, register) -> mask.
# Leaf 1 ECX: FMA, CX16, XSAVE, OSXSAVE, AVX, F16C.
_LEAF1_ECX_MASK: Final = (1 << 12) | (1 << 13) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 29)
# Leaf 7.0 EBX: AVX2, AVX512F/DQ/IFMA/PF/ER/CD/BW/VL.
_LEAF7_EBX_MASK: Final = (1 << 5) | (1 << 16) | (1 << 17) | (1 << 21) | (0xD << 26) | (0x3 << 30)
# Leaf 7.0 ECX: AVX512_VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ.
_LEAF7_ECX_MASK: Final = (1 << 1) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14)
# Leaf 7.0 EDX: AVX512_4VNNIW, 4FMAPS, VP2INTERSECT, FP16.
_LEAF7_EDX_MASK: Final = (1 << 2) | (1 << 3) | (1 << 8) | (1 << 23)
# Leaf 7.1 EAX: AVX-VNNI, AVX512_BF16.
_LEAF7_1_EAX_MASK: Final = (1 << 4) | (1 << 5)
# Leaf 0x80000001 ECX: XOP, FMA4 (AMD's AVX-era extensions).
_LEAF_80000001_ECX_MASK: Final = (1 << 11) | (1 << 16)
_LEAF1_ECX_HYPERVISOR: Final = 1 << 31
_KVM_CPUID_FLAG_SIGNIFCANT_INDEX: Final = 1

_U32 = struct.Struct("<I")

_supported_cpuid_cache: list[tuple[int, ...]] | None = None
_cache_lock = threading.Lock()


def get_supported_cpuid(kvm_fd: int) -> list[tuple[int, ...]]:
    """``KVM_GET_SUPPORTED_CPUID`` as (function, index, flags, eax, ebx, ecx, edx) tuples.

    The buffer grows on E2BIG (the kernel does not say how many entries it has).  The answer is
    the same for the life of the host, so it is cached.
    """
    global _supported_cpuid_cache
    with _cache_lock:
        if _supported_cpuid_cache is not None:
            return list(_supported_cpuid_cache)
        nent = 128
        while True:
            buf = bytearray(ctypes.sizeof(abi.kvm_cpuid2) + nent * ctypes.sizeof(abi.kvm_cpuid_entry2))
            _U32.pack_into(buf, 0, nent)
            try:
                fcntl.ioctl(kvm_fd, abi.KVM_GET_SUPPORTED_CPUID, buf)
                break
            except OSError as e:
                if e.errno != errno.E2BIG or nent >= 65536:
                    raise OSError(e.errno, f"KVM_GET_SUPPORTED_CPUID: {os.strerror(e.errno or 0)}") from None
                nent *= 2
        n = _U32.unpack_from(buf, 0)[0]
        entries = (abi.kvm_cpuid_entry2 * n).from_buffer(buf, ctypes.sizeof(abi.kvm_cpuid2))
        _supported_cpuid_cache = [(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in entries]
        return list(_supported_cpuid_cache)


def build_guest_cpuid(
    supported: list[tuple[int, ...]], *, vcpu_id: int, tsc_khz: int, acrn_features: int = 0
) -> list[tuple[int, ...]]:
    """The CPUID table a vCPU gets: supported leaves, masked, with ACRN's hypervisor leaves.

    KVM's own paravirtual leaves (0x40000000-0x400000FF, "KVMKVMKVM") are dropped: the guest
    runs on ACRN, not KVM.  Leaf 0xD (XSAVE state components) is dropped with XSAVE.  The
    initial APIC ID in leaves 1 and 0xB is ``vcpu_id``: the KVM vCPU id, which is the local APIC's ID.
    """
    out: list[tuple[int, ...]] = []
    for fn, idx, flags, eax, ebx, ecx, edx in supported:
        if 0x40000000 <= fn <= 0x400000FF or fn == 0xD:
            continue
        if fn == 1:
            ecx = (ecx & ~_LEAF1_ECX_MASK) | _LEAF1_ECX_HYPERVISOR
            ebx = (ebx & 0x00FFFFFF) | ((vcpu_id & 0xFF) << 24)
        elif fn == 7 and idx == 0:
            ebx &= ~_LEAF7_EBX_MASK
            ecx &= ~_LEAF7_ECX_MASK
            edx &= ~_LEAF7_EDX_MASK
        elif fn == 7 and idx == 1:
            eax &= ~_LEAF7_1_EAX_MASK
        elif fn == 0xB:
            edx = vcpu_id
        elif fn == 0x80000001:
            ecx &= ~_LEAF_80000001_ECX_MASK
        out.append((fn, idx, flags, eax, ebx, ecx, edx))
    sig = struct.unpack("<3I", ACRN_SIGNATURE)
    out.append((ACRN_CPUID_SIGNATURE, 0, 0, ACRN_CPUID_TIMING_INFO, *sig))
    out.append((ACRN_CPUID_FEATURES, 0, 0, acrn_features & 0xFFFFFFFF, 0, 0, 0))
    out.append((ACRN_CPUID_TIMING_INFO, 0, 0, tsc_khz & 0xFFFFFFFF, 0, 0, 0))
    return out


def _cpuid2_buffer(entries: list[tuple[int, ...]]) -> bytearray:
    head = ctypes.sizeof(abi.kvm_cpuid2)
    esz = ctypes.sizeof(abi.kvm_cpuid_entry2)
    buf = bytearray(head + len(entries) * esz)
    _U32.pack_into(buf, 0, len(entries))
    for i, (fn, idx, flags, eax, ebx, ecx, edx) in enumerate(entries):
        struct.pack_into("<7I", buf, head + i * esz, fn, idx, flags, eax, ebx, ecx, edx)
    return buf


def set_cpuid(vcpu_fd: int, entries: list[tuple[int, ...]]) -> None:
    """``KVM_SET_CPUID2`` with (function, index, flags, eax, ebx, ecx, edx) tuples."""
    kvm_ioctl(vcpu_fd, "KVM_SET_CPUID2", abi.KVM_SET_CPUID2, _cpuid2_buffer(entries))
