"""The slice of ``<linux/kvm.h>`` (x86-64) that the KVM accelerator uses: structs, ioctls, constants.

Only this module knows KVM byte layouts (the same rule as :mod:`acrn.uapi` for the HSM ABI).  Names
are the C names.  Every value here is compared with the compiled header by
``tests/emu/test_kvm_layout.py`` (hand-typed KVM numbers found in public snippets are often
wrong), so nothing in this file is trusted on sight.

``kvm_run`` is not a ctypes structure: the accelerator reads it in place from the vCPU ``mmap`` with
:func:`struct.unpack_from` (cheaper per exit than ctypes attribute access), so its layout is given
as ``RUN_*`` byte offsets.
"""

from __future__ import annotations

import ctypes
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64
from typing import Final

# --------------------------------------------------------------------------------------------
# ioctl number encoding (asm-generic/ioctl.h)
# --------------------------------------------------------------------------------------------
_IOC_WRITE: Final = 1
_IOC_READ: Final = 2
KVMIO: Final = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(0, nr, 0)


def _ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


# --------------------------------------------------------------------------------------------
# Structures
# --------------------------------------------------------------------------------------------
class kvm_regs(ctypes.LittleEndianStructure):
    # KVM's own GPR order (rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp), not the hardware encoding order.
    _fields_ = [
        ("rax", c_uint64), ("rbx", c_uint64), ("rcx", c_uint64), ("rdx", c_uint64),
        ("rsi", c_uint64), ("rdi", c_uint64), ("rsp", c_uint64), ("rbp", c_uint64),
        ("r8", c_uint64), ("r9", c_uint64), ("r10", c_uint64), ("r11", c_uint64),
        ("r12", c_uint64), ("r13", c_uint64), ("r14", c_uint64), ("r15", c_uint64),
        ("rip", c_uint64), ("rflags", c_uint64),
    ]  # fmt: skip


class kvm_segment(ctypes.LittleEndianStructure):
    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class kvm_dtable(ctypes.LittleEndianStructure):
    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


KVM_NR_INTERRUPTS: Final = 256


class kvm_sregs(ctypes.LittleEndianStructure):
    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment), ("fs", kvm_segment),
        ("gs", kvm_segment), ("ss", kvm_segment), ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", c_uint64), ("cr2", c_uint64), ("cr3", c_uint64), ("cr4", c_uint64), ("cr8", c_uint64),
        ("efer", c_uint64), ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]  # fmt: skip


class kvm_fpu(ctypes.LittleEndianStructure):
    _fields_ = [
        ("fpr", (c_uint8 * 16) * 8),
        ("fcw", c_uint16),
        ("fsw", c_uint16),
        ("ftwx", c_uint8),
        ("pad1", c_uint8),
        ("last_opcode", c_uint16),
        ("last_ip", c_uint64),
        ("last_dp", c_uint64),
        ("xmm", (c_uint8 * 16) * 16),
        ("mxcsr", c_uint32),
        ("pad2", c_uint32),
    ]


class kvm_userspace_memory_region(ctypes.LittleEndianStructure):
    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


class kvm_cpuid_entry2(ctypes.LittleEndianStructure):
    _fields_ = [
        ("function", c_uint32),
        ("index", c_uint32),
        ("flags", c_uint32),
        ("eax", c_uint32),
        ("ebx", c_uint32),
        ("ecx", c_uint32),
        ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    ]


class kvm_cpuid2(ctypes.LittleEndianStructure):
    """Header; ``nent`` entries follow (``entries`` is the C flexible array, zero-sized here)."""

    _fields_ = [("nent", c_uint32), ("padding", c_uint32), ("entries", kvm_cpuid_entry2 * 0)]


class kvm_msr_entry(ctypes.LittleEndianStructure):
    _fields_ = [("index", c_uint32), ("reserved", c_uint32), ("data", c_uint64)]


class kvm_msrs(ctypes.LittleEndianStructure):
    """Header; ``nmsrs`` entries follow (the flexible array gives the struct 8-byte alignment)."""

    _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32), ("entries", kvm_msr_entry * 0)]


class kvm_pit_config(ctypes.LittleEndianStructure):
    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


class kvm_lapic_state(ctypes.LittleEndianStructure):
    _fields_ = [("regs", ctypes.c_char * 1024)]


#: Every structure, for the layout test.
STRUCTS: Final[tuple[type[ctypes.Structure], ...]] = (
    kvm_regs,
    kvm_segment,
    kvm_dtable,
    kvm_sregs,
    kvm_fpu,
    kvm_userspace_memory_region,
    kvm_cpuid_entry2,
    kvm_cpuid2,
    kvm_msr_entry,
    kvm_msrs,
    kvm_pit_config,
    kvm_lapic_state,
)

# --------------------------------------------------------------------------------------------
# ioctls (include/uapi/linux/kvm.h)
# --------------------------------------------------------------------------------------------
# System fd.
KVM_GET_API_VERSION: Final = _io(0x00)
KVM_CREATE_VM: Final = _io(0x01)
KVM_CHECK_EXTENSION: Final = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE: Final = _io(0x04)
KVM_GET_SUPPORTED_CPUID: Final = _iowr(0x05, ctypes.sizeof(kvm_cpuid2))
# VM fd.
KVM_CREATE_VCPU: Final = _io(0x41)
KVM_SET_USER_MEMORY_REGION: Final = _iow(0x46, ctypes.sizeof(kvm_userspace_memory_region))
KVM_SET_TSS_ADDR: Final = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR: Final = _iow(0x48, 8)
KVM_CREATE_IRQCHIP: Final = _io(0x60)
KVM_SET_BOOT_CPU_ID: Final = _io(0x78)
KVM_CREATE_PIT2: Final = _iow(0x77, ctypes.sizeof(kvm_pit_config))
# vCPU fd.
KVM_RUN: Final = _io(0x80)
KVM_GET_REGS: Final = _ior(0x81, ctypes.sizeof(kvm_regs))
KVM_SET_REGS: Final = _iow(0x82, ctypes.sizeof(kvm_regs))
KVM_GET_SREGS: Final = _ior(0x83, ctypes.sizeof(kvm_sregs))
KVM_SET_SREGS: Final = _iow(0x84, ctypes.sizeof(kvm_sregs))
KVM_GET_MSRS: Final = _iowr(0x88, ctypes.sizeof(kvm_msrs))
KVM_SET_MSRS: Final = _iow(0x89, ctypes.sizeof(kvm_msrs))
KVM_GET_FPU: Final = _ior(0x8C, ctypes.sizeof(kvm_fpu))
KVM_SET_FPU: Final = _iow(0x8D, ctypes.sizeof(kvm_fpu))
KVM_GET_LAPIC: Final = _ior(0x8E, ctypes.sizeof(kvm_lapic_state))
KVM_SET_LAPIC: Final = _iow(0x8F, ctypes.sizeof(kvm_lapic_state))
KVM_SET_CPUID2: Final = _iow(0x90, ctypes.sizeof(kvm_cpuid2))
KVM_GET_CPUID2: Final = _iowr(0x91, ctypes.sizeof(kvm_cpuid2))
KVM_GET_TSC_KHZ: Final = _io(0xA3)

#: name -> number, for the layout test and for error messages.
IOCTLS: Final = {
    n: v
    for n, v in dict(globals()).items()
    if n.startswith("KVM_") and isinstance(v, int) and n not in ("KVM_NR_INTERRUPTS",)
}

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------
KVM_API_VERSION: Final = 12

KVM_CAP_IRQCHIP: Final = 0
KVM_CAP_USER_MEMORY: Final = 3
KVM_CAP_SET_TSS_ADDR: Final = 4
KVM_CAP_EXT_CPUID: Final = 7
KVM_CAP_PIT2: Final = 33
KVM_CAP_SET_IDENTITY_MAP_ADDR: Final = 37
KVM_CAP_READONLY_MEM: Final = 81
KVM_CAP_IMMEDIATE_EXIT: Final = 136

KVM_MEM_READONLY: Final = 1 << 1
KVM_PIT_SPEAKER_DUMMY: Final = 1

KVM_EXIT_UNKNOWN: Final = 0
KVM_EXIT_EXCEPTION: Final = 1
KVM_EXIT_IO: Final = 2
KVM_EXIT_HYPERCALL: Final = 3
KVM_EXIT_DEBUG: Final = 4
KVM_EXIT_HLT: Final = 5
KVM_EXIT_MMIO: Final = 6
KVM_EXIT_IRQ_WINDOW_OPEN: Final = 7
KVM_EXIT_SHUTDOWN: Final = 8
KVM_EXIT_FAIL_ENTRY: Final = 9
KVM_EXIT_INTR: Final = 10
KVM_EXIT_INTERNAL_ERROR: Final = 17
KVM_EXIT_SYSTEM_EVENT: Final = 24

KVM_EXIT_IO_IN: Final = 0
KVM_EXIT_IO_OUT: Final = 1

KVM_INTERNAL_ERROR_EMULATION: Final = 1
KVM_INTERNAL_ERROR_SIMUL_EX: Final = 2
KVM_INTERNAL_ERROR_DELIVERY_EV: Final = 3
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES: Final = 1 << 0

KVM_SYSTEM_EVENT_SHUTDOWN: Final = 1
KVM_SYSTEM_EVENT_RESET: Final = 2
KVM_SYSTEM_EVENT_CRASH: Final = 3

#: Constants checked against the header by the layout test (name -> value).
CONSTANTS: Final = {
    n: v
    for n, v in dict(globals()).items()
    if n.startswith(("KVM_CAP_", "KVM_EXIT_", "KVM_INTERNAL_ERROR_", "KVM_SYSTEM_EVENT_", "KVM_MEM_"))
    or n in ("KVM_API_VERSION", "KVM_PIT_SPEAKER_DUMMY", "KVMIO", "KVM_NR_INTERRUPTS")
}

# --------------------------------------------------------------------------------------------
# struct kvm_run: byte offsets in the vCPU mmap (include/uapi/linux/kvm.h)
# --------------------------------------------------------------------------------------------
KVM_RUN_SIZE: Final = 2352
RUN_IMMEDIATE_EXIT: Final = 1  # u8
RUN_EXIT_REASON: Final = 8  # u32
RUN_IF_FLAG: Final = 13  # u8
RUN_EXIT_UNION: Final = 32
# exit union, KVM_EXIT_IO
RUN_IO_DIRECTION: Final = 32  # u8
RUN_IO_SIZE: Final = 33  # u8
RUN_IO_PORT: Final = 34  # u16
RUN_IO_COUNT: Final = 36  # u32
RUN_IO_DATA_OFFSET: Final = 40  # u64
# exit union, KVM_EXIT_MMIO
RUN_MMIO_PHYS_ADDR: Final = 32  # u64
RUN_MMIO_DATA: Final = 40  # u8[8]
RUN_MMIO_LEN: Final = 48  # u32
RUN_MMIO_IS_WRITE: Final = 52  # u8
# exit union, KVM_EXIT_FAIL_ENTRY
RUN_FAIL_ENTRY_REASON: Final = 32  # u64
RUN_FAIL_ENTRY_CPU: Final = 40  # u32
# exit union, KVM_EXIT_INTERNAL_ERROR (and its emulation_failure view)
RUN_INTERNAL_SUBERROR: Final = 32  # u32
RUN_INTERNAL_NDATA: Final = 36  # u32
RUN_INTERNAL_DATA: Final = 40  # u64[16]
RUN_EMULATION_FAILURE_FLAGS: Final = 40  # u64
RUN_EMULATION_FAILURE_INSN_SIZE: Final = 48  # u8
RUN_EMULATION_FAILURE_INSN_BYTES: Final = 49  # u8[15]
# exit union, KVM_EXIT_SYSTEM_EVENT
RUN_SYSTEM_EVENT_TYPE: Final = 32  # u32

#: (offset constant name, C member of struct kvm_run, size in bytes), for the layout test.
RUN_FIELDS: Final = (
    ("RUN_IMMEDIATE_EXIT", "immediate_exit", 1),
    ("RUN_EXIT_REASON", "exit_reason", 4),
    ("RUN_IF_FLAG", "if_flag", 1),
    ("RUN_IO_DIRECTION", "io.direction", 1),
    ("RUN_IO_SIZE", "io.size", 1),
    ("RUN_IO_PORT", "io.port", 2),
    ("RUN_IO_COUNT", "io.count", 4),
    ("RUN_IO_DATA_OFFSET", "io.data_offset", 8),
    ("RUN_MMIO_PHYS_ADDR", "mmio.phys_addr", 8),
    ("RUN_MMIO_DATA", "mmio.data", 8),
    ("RUN_MMIO_LEN", "mmio.len", 4),
    ("RUN_MMIO_IS_WRITE", "mmio.is_write", 1),
    ("RUN_FAIL_ENTRY_REASON", "fail_entry.hardware_entry_failure_reason", 8),
    ("RUN_FAIL_ENTRY_CPU", "fail_entry.cpu", 4),
    ("RUN_INTERNAL_SUBERROR", "internal.suberror", 4),
    ("RUN_INTERNAL_NDATA", "internal.ndata", 4),
    ("RUN_INTERNAL_DATA", "internal.data", 128),
    ("RUN_EMULATION_FAILURE_FLAGS", "emulation_failure.flags", 8),
    ("RUN_EMULATION_FAILURE_INSN_SIZE", "emulation_failure.insn_size", 1),
    ("RUN_EMULATION_FAILURE_INSN_BYTES", "emulation_failure.insn_bytes", 15),
    ("RUN_SYSTEM_EVENT_TYPE", "system_event.type", 4),
)
