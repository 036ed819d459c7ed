"""The ACRN HSM userspace ABI: every struct, constant and ioctl number of ``linux/acrn.h``.

This module is the single source of truth for byte layouts in pyacrn.  Names are exactly the C
names so that a reader of the header (or of ACRN's device model) finds them here.

Endianness: the header declares the register fields ``__le*``; every structure here is a
``ctypes.LittleEndianStructure`` (or ``LittleEndianUnion``), so encoding is little-endian whatever
the host.  Packing follows the header: ``acrn_descriptor_ptr`` and ``acrn_acpi_generic_address``
are ``__packed__``; everything else has natural x86-64 alignment, including the 4 bytes of implicit
tail padding at the end of ``acrn_regs`` (offset 284..287) that nobody checks.

``acrn_io_request`` is ``__attribute__((aligned(256)))`` in C.  ctypes cannot express an alignment
larger than that of its members, so the size (256) is reached with an explicit tail-padding field
``_align_pad``; offsets and size are identical to C, only ``ctypes.alignment`` differs (8, not 256).

The layouts are proven equal to the C header by ``tests/test_uapi_layout.py``, which compiles a
probe against the system's ``<linux/acrn.h>`` with gcc.

Besides the header, the module carries the ABI values a user of the interface needs that live
elsewhere (the hypercall IDs of ``drivers/virt/acrn/hypercall.h``, ``ACRN_INVALID_VMID``, the VM
flags, the SET_IRQLINE and PM command-word encodings); each is marked with where it comes from.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_uint8, c_uint16, c_uint32, c_uint64
from typing import Final

# --------------------------------------------------------------------------------------------
# ioctl number encoding (asm-generic/ioctl.h, which x86 uses)
# --------------------------------------------------------------------------------------------
_IOC_NRBITS: Final = 8
_IOC_TYPEBITS: Final = 8
_IOC_SIZEBITS: Final = 14
_IOC_NRSHIFT: Final = 0
_IOC_TYPESHIFT: Final = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT: Final = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT: Final = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE: Final = 0
_IOC_WRITE: Final = 1
_IOC_READ: Final = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    """Encode an ioctl number exactly as the kernel's ``_IOC`` macro does."""
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOW(type_: int, nr: int, ctype: type[ctypes._CData]) -> int:
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(ctype))


def _IOWR(type_: int, nr: int, ctype: type[ctypes._CData]) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(ctype))


def ioc_dir(cmd: int) -> int:
    """The direction bits (``_IOC_READ``/``_IOC_WRITE``) of an ioctl number."""
    return (cmd >> _IOC_DIRSHIFT) & 0x3


def ioc_size(cmd: int) -> int:
    """The argument size encoded in an ioctl number."""
    return (cmd >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1)


def ioc_nr(cmd: int) -> int:
    """The command number (low byte) of an ioctl number."""
    return (cmd >> _IOC_NRSHIFT) & 0xFF


def ioc_type(cmd: int) -> int:
    """The type byte of an ioctl number (0xA2 for ACRN)."""
    return (cmd >> _IOC_TYPESHIFT) & 0xFF


# --------------------------------------------------------------------------------------------
# I/O requests
# --------------------------------------------------------------------------------------------
ACRN_IO_REQUEST_MAX: Final = 16

ACRN_IOREQ_STATE_PENDING: Final = 0
ACRN_IOREQ_STATE_COMPLETE: Final = 1
ACRN_IOREQ_STATE_PROCESSING: Final = 2
ACRN_IOREQ_STATE_FREE: Final = 3

ACRN_IOREQ_TYPE_PORTIO: Final = 0
ACRN_IOREQ_TYPE_MMIO: Final = 1
ACRN_IOREQ_TYPE_PCICFG: Final = 2

ACRN_IOREQ_DIR_READ: Final = 0
ACRN_IOREQ_DIR_WRITE: Final = 1


class acrn_mmio_request(ctypes.LittleEndianStructure):
    """An MMIO access (32 bytes); ``value`` is 64-bit."""

    _fields_ = [
        ("direction", c_uint32),
        ("reserved", c_uint32),
        ("address", c_uint64),
        ("size", c_uint64),
        ("value", c_uint64),
    ]


class acrn_pio_request(ctypes.LittleEndianStructure):
    """A port I/O access (32 bytes with tail padding); ``value`` is 32-bit."""

    _fields_ = [
        ("direction", c_uint32),
        ("reserved", c_uint32),
        ("address", c_uint64),
        ("size", c_uint64),
        ("value", c_uint32),
    ]


class acrn_pci_request(ctypes.LittleEndianStructure):
    """A PCI config-space access (48 bytes); its first 28 bytes match ``acrn_pio_request``."""

    _fields_ = [
        ("direction", c_uint32),
        ("reserved", c_uint32 * 3),
        ("size", c_uint64),
        ("value", c_uint32),
        ("bus", c_uint32),
        ("dev", c_uint32),
        ("func", c_uint32),
        ("reg", c_uint32),
    ]


class _acrn_io_request_reqs(ctypes.LittleEndianUnion):
    _fields_ = [
        ("pio_request", acrn_pio_request),
        ("pci_request", acrn_pci_request),
        ("mmio_request", acrn_mmio_request),
        ("data", c_uint64 * 8),
    ]


class acrn_io_request(ctypes.LittleEndianStructure):
    """One 256-byte slot of the ioreq page; slot index = vCPU id."""

    _fields_ = [
        ("type", c_uint32),
        ("completion_polling", c_uint32),
        ("reserved0", c_uint32 * 14),
        ("reqs", _acrn_io_request_reqs),
        ("reserved1", c_uint32),
        ("kernel_handled", c_uint32),
        ("processed", c_uint32),
        # C: __attribute__((aligned(256))); see the module docstring.
        ("_align_pad", c_uint8 * 116),
    ]


class _acrn_io_request_buffer_u(ctypes.LittleEndianUnion):
    _fields_ = [
        ("req_slot", acrn_io_request * ACRN_IO_REQUEST_MAX),
        ("reserved", c_uint8 * 4096),
    ]


class acrn_io_request_buffer(ctypes.LittleEndianStructure):
    """The 4096-byte shared ioreq page: 16 slots of ``acrn_io_request``."""

    _anonymous_ = ("u",)
    _fields_ = [("u", _acrn_io_request_buffer_u)]


class acrn_ioreq_notify(ctypes.LittleEndianStructure):
    """Argument of NOTIFY_REQUEST_FINISH. The kernel ignores ``vmid`` and truncates ``vcpu``."""

    _fields_ = [
        ("vmid", c_uint16),
        ("reserved", c_uint16),
        ("vcpu", c_uint32),
    ]


# --------------------------------------------------------------------------------------------
# VM creation and vCPU registers
# --------------------------------------------------------------------------------------------
class guid_t(ctypes.LittleEndianStructure):
    """``guid_t`` from ``linux/uuid.h``: 16 bytes. ACRN >= 2021 reads them as a NUL-terminated name."""

    _fields_ = [("b", c_uint8 * 16)]


class acrn_vm_creation(ctypes.LittleEndianStructure):
    """Argument of CREATE_VM (48 bytes). ``vmid`` and ``vcpu_num`` are written back."""

    _fields_ = [
        ("vmid", c_uint16),
        ("reserved0", c_uint16),
        ("vcpu_num", c_uint16),
        ("reserved1", c_uint16),
        ("uuid", guid_t),
        ("vm_flag", c_uint64),
        ("ioreq_buf", c_uint64),
        ("cpu_affinity", c_uint64),
    ]


class acrn_gp_regs(ctypes.LittleEndianStructure):
    """The 16 general-purpose registers, in ACRN's order (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15)."""

    _fields_ = [
        ("rax", c_uint64),
        ("rcx", c_uint64),
        ("rdx", c_uint64),
        ("rbx", c_uint64),
        ("rsp", c_uint64),
        ("rbp", c_uint64),
        ("rsi", c_uint64),
        ("rdi", c_uint64),
        ("r8", c_uint64),
        ("r9", c_uint64),
        ("r10", c_uint64),
        ("r11", c_uint64),
        ("r12", c_uint64),
        ("r13", c_uint64),
        ("r14", c_uint64),
        ("r15", c_uint64),
    ]


class acrn_descriptor_ptr(ctypes.LittleEndianStructure):
    """GDTR/IDTR image (16 bytes, packed): limit @0, base @2, reserved[3] @10 (must be 0)."""

    _pack_ = 1
    _fields_ = [
        ("limit", c_uint16),
        ("base", c_uint64),
        ("reserved", c_uint16 * 3),
    ]


class acrn_regs(ctypes.LittleEndianStructure):
    """A vCPU's initial register state (288 bytes; note the CR order cr0, cr4, cr3)."""

    _fields_ = [
        ("gprs", acrn_gp_regs),
        ("gdt", acrn_descriptor_ptr),
        ("idt", acrn_descriptor_ptr),
        ("rip", c_uint64),
        ("cs_base", c_uint64),
        ("cr0", c_uint64),
        ("cr4", c_uint64),
        ("cr3", c_uint64),
        ("ia32_efer", c_uint64),
        ("rflags", c_uint64),
        ("reserved_64", c_uint64 * 4),
        ("cs_ar", c_uint32),
        ("cs_limit", c_uint32),
        ("reserved_32", c_uint32 * 3),
        ("cs_sel", c_uint16),
        ("ss_sel", c_uint16),
        ("ds_sel", c_uint16),
        ("es_sel", c_uint16),
        ("fs_sel", c_uint16),
        ("gs_sel", c_uint16),
        ("ldt_sel", c_uint16),
        ("tr_sel", c_uint16),
    ]


class acrn_vcpu_regs(ctypes.LittleEndianStructure):
    """Argument of SET_VCPU_REGS (296 bytes): vcpu_id, reserved[3] (must be 0), the registers."""

    _fields_ = [
        ("vcpu_id", c_uint16),
        ("reserved", c_uint16 * 3),
        ("vcpu_regs", acrn_regs),
    ]


# --------------------------------------------------------------------------------------------
# Memory mappings
# --------------------------------------------------------------------------------------------
ACRN_MEM_ACCESS_RIGHT_MASK: Final = 0x00000007
ACRN_MEM_ACCESS_READ: Final = 0x00000001
ACRN_MEM_ACCESS_WRITE: Final = 0x00000002
ACRN_MEM_ACCESS_EXEC: Final = 0x00000004
ACRN_MEM_ACCESS_RWX: Final = ACRN_MEM_ACCESS_READ | ACRN_MEM_ACCESS_WRITE | ACRN_MEM_ACCESS_EXEC

ACRN_MEM_TYPE_MASK: Final = 0x000007C0
ACRN_MEM_TYPE_WB: Final = 0x00000040
ACRN_MEM_TYPE_WT: Final = 0x00000080
ACRN_MEM_TYPE_UC: Final = 0x00000100
ACRN_MEM_TYPE_WC: Final = 0x00000200
ACRN_MEM_TYPE_WP: Final = 0x00000400

ACRN_MEMMAP_RAM: Final = 0
ACRN_MEMMAP_MMIO: Final = 1


class _acrn_vm_memmap_u(ctypes.LittleEndianUnion):
    _fields_ = [("service_vm_pa", c_uint64), ("vma_base", c_uint64)]


class acrn_vm_memmap(ctypes.LittleEndianStructure):
    """Argument of SET/UNSET_MEMSEG (32 bytes). For RAM, ``vma_base`` is a userspace address."""

    _anonymous_ = ("u",)
    _fields_ = [
        ("type", c_uint32),
        ("attr", c_uint32),
        ("user_vm_pa", c_uint64),
        ("u", _acrn_vm_memmap_u),
        ("len", c_uint64),
    ]


# --------------------------------------------------------------------------------------------
# Passthrough and virtual devices
# --------------------------------------------------------------------------------------------
ACRN_PTDEV_IRQ_INTX: Final = 0
ACRN_PTDEV_IRQ_MSI: Final = 1
ACRN_PTDEV_IRQ_MSIX: Final = 2


class _acrn_ptdev_irq_intx(ctypes.LittleEndianStructure):
    _fields_ = [
        ("virt_pin", c_uint32),
        ("phys_pin", c_uint32),
        ("is_pic_pin", c_uint32),
    ]


class acrn_ptdev_irq(ctypes.LittleEndianStructure):
    """Argument of SET/RESET_PTDEV_INTR (20 bytes)."""

    _fields_ = [
        ("type", c_uint32),
        ("virt_bdf", c_uint16),
        ("phys_bdf", c_uint16),
        ("intx", _acrn_ptdev_irq_intx),
    ]


ACRN_PTDEV_QUIRK_ASSIGN: Final = 1 << 0
ACRN_MMIODEV_RES_NUM: Final = 3
ACRN_PCI_NUM_BARS: Final = 6


class acrn_pcidev(ctypes.LittleEndianStructure):
    """Argument of ASSIGN/DEASSIGN_PCIDEV (36 bytes)."""

    _fields_ = [
        ("type", c_uint32),
        ("virt_bdf", c_uint16),
        ("phys_bdf", c_uint16),
        ("intr_line", c_uint8),
        ("intr_pin", c_uint8),
        ("bar", c_uint32 * ACRN_PCI_NUM_BARS),
    ]


class _acrn_mmiodev_res(ctypes.LittleEndianStructure):
    _fields_ = [
        ("user_vm_pa", c_uint64),
        ("service_vm_pa", c_uint64),
        ("size", c_uint64),
        ("mem_type", c_uint64),
    ]


class acrn_mmiodev(ctypes.LittleEndianStructure):
    """Argument of ASSIGN/DEASSIGN_MMIODEV (104 bytes)."""

    _fields_ = [
        ("name", c_uint8 * 8),
        ("res", _acrn_mmiodev_res * ACRN_MMIODEV_RES_NUM),
    ]


class _acrn_vdev_id_fields(ctypes.LittleEndianStructure):
    _fields_ = [
        ("vendor", c_uint16),
        ("device", c_uint16),
        ("legacy_id", c_uint32),
    ]


class _acrn_vdev_id(ctypes.LittleEndianUnion):
    _fields_ = [("value", c_uint64), ("fields", _acrn_vdev_id_fields)]


class acrn_vdev(ctypes.LittleEndianStructure):
    """Argument of CREATE/DESTROY_VDEV (192 bytes)."""

    _fields_ = [
        ("id", _acrn_vdev_id),
        ("slot", c_uint64),
        ("io_addr", c_uint32 * ACRN_PCI_NUM_BARS),
        ("io_size", c_uint32 * ACRN_PCI_NUM_BARS),
        ("args", c_uint8 * 128),
    ]


class acrn_msi_entry(ctypes.LittleEndianStructure):
    """Argument of INJECT_MSI (16 bytes): MSI address and data registers."""

    _fields_ = [("msi_addr", c_uint64), ("msi_data", c_uint64)]


# --------------------------------------------------------------------------------------------
# Power management
# --------------------------------------------------------------------------------------------
class acrn_acpi_generic_address(ctypes.LittleEndianStructure):
    """ACPI Generic Address Structure (12 bytes, packed)."""

    _pack_ = 1
    _fields_ = [
        ("space_id", c_uint8),
        ("bit_width", c_uint8),
        ("bit_offset", c_uint8),
        ("access_size", c_uint8),
        ("address", c_uint64),
    ]


class acrn_cstate_data(ctypes.LittleEndianStructure):
    """One C-state (32 bytes), written back by PM_GET_CPU_STATE(GET_CX_DATA)."""

    _fields_ = [
        ("cx_reg", acrn_acpi_generic_address),
        ("type", c_uint8),
        ("latency", c_uint32),
        ("power", c_uint64),
    ]


class acrn_pstate_data(ctypes.LittleEndianStructure):
    """One P-state (48 bytes), written back by PM_GET_CPU_STATE(GET_PX_DATA)."""

    _fields_ = [
        ("core_frequency", c_uint64),
        ("power", c_uint64),
        ("transition_latency", c_uint64),
        ("bus_master_latency", c_uint64),
        ("control", c_uint64),
        ("status", c_uint64),
    ]


PMCMD_TYPE_MASK: Final = 0x000000FF
ACRN_PMCMD_GET_PX_CNT: Final = 0
ACRN_PMCMD_GET_PX_DATA: Final = 1
ACRN_PMCMD_GET_CX_CNT: Final = 2
ACRN_PMCMD_GET_CX_DATA: Final = 3

# --------------------------------------------------------------------------------------------
# ioeventfd / irqfd
# --------------------------------------------------------------------------------------------
ACRN_IOEVENTFD_FLAG_PIO: Final = 0x01
ACRN_IOEVENTFD_FLAG_DATAMATCH: Final = 0x02
ACRN_IOEVENTFD_FLAG_DEASSIGN: Final = 0x04


class acrn_ioeventfd(ctypes.LittleEndianStructure):
    """Argument of IOEVENTFD (32 bytes)."""

    _fields_ = [
        ("fd", c_uint32),
        ("flags", c_uint32),
        ("addr", c_uint64),
        ("len", c_uint32),
        ("reserved", c_uint32),
        ("data", c_uint64),
    ]


ACRN_IRQFD_FLAG_DEASSIGN: Final = 0x01


class acrn_irqfd(ctypes.LittleEndianStructure):
    """Argument of IRQFD (24 bytes)."""

    _fields_ = [
        ("fd", c_int32),
        ("flags", c_uint32),
        ("msi", acrn_msi_entry),
    ]


# --------------------------------------------------------------------------------------------
# ioctl numbers
# --------------------------------------------------------------------------------------------
ACRN_IOCTL_TYPE: Final = 0xA2

ACRN_IOCTL_CREATE_VM: Final = _IOWR(ACRN_IOCTL_TYPE, 0x10, acrn_vm_creation)
ACRN_IOCTL_DESTROY_VM: Final = _IO(ACRN_IOCTL_TYPE, 0x11)
ACRN_IOCTL_START_VM: Final = _IO(ACRN_IOCTL_TYPE, 0x12)
ACRN_IOCTL_PAUSE_VM: Final = _IO(ACRN_IOCTL_TYPE, 0x13)
ACRN_IOCTL_RESET_VM: Final = _IO(ACRN_IOCTL_TYPE, 0x15)
ACRN_IOCTL_SET_VCPU_REGS: Final = _IOW(ACRN_IOCTL_TYPE, 0x16, acrn_vcpu_regs)

ACRN_IOCTL_INJECT_MSI: Final = _IOW(ACRN_IOCTL_TYPE, 0x23, acrn_msi_entry)
# Declared with `unsigned long` / `__u64`, but both take their argument by value
# (drivers/virt/acrn/hsm.c: acrn_dev_ioctl passes ioctl_param on as it is; docs/abi.md).
ACRN_IOCTL_VM_INTR_MONITOR: Final = _IOW(ACRN_IOCTL_TYPE, 0x24, c_uint64)
ACRN_IOCTL_SET_IRQLINE: Final = _IOW(ACRN_IOCTL_TYPE, 0x25, c_uint64)

ACRN_IOCTL_NOTIFY_REQUEST_FINISH: Final = _IOW(ACRN_IOCTL_TYPE, 0x31, acrn_ioreq_notify)
ACRN_IOCTL_CREATE_IOREQ_CLIENT: Final = _IO(ACRN_IOCTL_TYPE, 0x32)
ACRN_IOCTL_ATTACH_IOREQ_CLIENT: Final = _IO(ACRN_IOCTL_TYPE, 0x33)
ACRN_IOCTL_DESTROY_IOREQ_CLIENT: Final = _IO(ACRN_IOCTL_TYPE, 0x34)
ACRN_IOCTL_CLEAR_VM_IOREQ: Final = _IO(ACRN_IOCTL_TYPE, 0x35)

ACRN_IOCTL_SET_MEMSEG: Final = _IOW(ACRN_IOCTL_TYPE, 0x41, acrn_vm_memmap)
ACRN_IOCTL_UNSET_MEMSEG: Final = _IOW(ACRN_IOCTL_TYPE, 0x42, acrn_vm_memmap)

ACRN_IOCTL_SET_PTDEV_INTR: Final = _IOW(ACRN_IOCTL_TYPE, 0x53, acrn_ptdev_irq)
ACRN_IOCTL_RESET_PTDEV_INTR: Final = _IOW(ACRN_IOCTL_TYPE, 0x54, acrn_ptdev_irq)
ACRN_IOCTL_ASSIGN_PCIDEV: Final = _IOW(ACRN_IOCTL_TYPE, 0x55, acrn_pcidev)
ACRN_IOCTL_DEASSIGN_PCIDEV: Final = _IOW(ACRN_IOCTL_TYPE, 0x56, acrn_pcidev)
ACRN_IOCTL_ASSIGN_MMIODEV: Final = _IOW(ACRN_IOCTL_TYPE, 0x57, acrn_mmiodev)
ACRN_IOCTL_DEASSIGN_MMIODEV: Final = _IOW(ACRN_IOCTL_TYPE, 0x58, acrn_mmiodev)
ACRN_IOCTL_CREATE_VDEV: Final = _IOW(ACRN_IOCTL_TYPE, 0x59, acrn_vdev)
ACRN_IOCTL_DESTROY_VDEV: Final = _IOW(ACRN_IOCTL_TYPE, 0x5A, acrn_vdev)

ACRN_IOCTL_PM_GET_CPU_STATE: Final = _IOWR(ACRN_IOCTL_TYPE, 0x60, c_uint64)

ACRN_IOCTL_IOEVENTFD: Final = _IOW(ACRN_IOCTL_TYPE, 0x70, acrn_ioeventfd)
ACRN_IOCTL_IRQFD: Final = _IOW(ACRN_IOCTL_TYPE, 0x71, acrn_irqfd)

#: Every ioctl of the header: name -> number.
IOCTLS: Final[dict[str, int]] = {
    name: value
    for name, value in list(globals().items())
    if name.startswith("ACRN_IOCTL_") and name != "ACRN_IOCTL_TYPE"
}
#: Reverse map used by traces: number -> name.
IOCTL_NAMES: Final[dict[int, str]] = {v: k for k, v in IOCTLS.items()}

#: Every struct of the header (the anonymous inner types are reached through these).
STRUCTS: Final[tuple[type[ctypes.Structure], ...]] = (
    acrn_mmio_request,
    acrn_pio_request,
    acrn_pci_request,
    acrn_io_request,
    acrn_io_request_buffer,
    acrn_ioreq_notify,
    acrn_vm_creation,
    acrn_gp_regs,
    acrn_descriptor_ptr,
    acrn_regs,
    acrn_vcpu_regs,
    acrn_vm_memmap,
    acrn_ptdev_irq,
    acrn_pcidev,
    acrn_mmiodev,
    acrn_vdev,
    acrn_msi_entry,
    acrn_acpi_generic_address,
    acrn_cstate_data,
    acrn_pstate_data,
    acrn_ioeventfd,
    acrn_irqfd,
)

# --------------------------------------------------------------------------------------------
# ABI values defined outside linux/acrn.h
# --------------------------------------------------------------------------------------------
#: The vmid of an fd with no VM (drivers/virt/acrn/acrn_drv.h).
ACRN_INVALID_VMID: Final = 0xFFFF
#: Length of the VM name the hypervisor reads from ``acrn_vm_creation.uuid`` (acrn_common.h).
MAX_VM_NAME_LEN: Final = 16
#: Size of the shared ioreq page.
ACRN_IO_REQUEST_BUFFER_SIZE: Final = 4096

# vm_flag bits (hypervisor acrn_common.h GUEST_FLAG_*).
GUEST_FLAG_SECURE_WORLD_ENABLED: Final = 1 << 0
GUEST_FLAG_LAPIC_PASSTHROUGH: Final = 1 << 1
GUEST_FLAG_IO_COMPLETION_POLLING: Final = 1 << 2
GUEST_FLAG_HIDE_MTRR: Final = 1 << 3
GUEST_FLAG_RT: Final = 1 << 4
GUEST_FLAG_NVMX_ENABLED: Final = 1 << 5
GUEST_FLAG_SECURITY_VM: Final = 1 << 6
GUEST_FLAG_VCAT_ENABLED: Final = 1 << 7
GUEST_FLAG_STATIC_VM: Final = 1 << 8
GUEST_FLAG_TEE: Final = 1 << 9
GUEST_FLAG_REE: Final = 1 << 10
GUEST_FLAG_PMU_PASSTHROUGH: Final = 1 << 11
#: Flags a post-launched VM's creator may choose (vm_config.h DM_OWNED_GUEST_FLAG_MASK, debug build).
DM_OWNED_GUEST_FLAG_MASK: Final = (
    GUEST_FLAG_SECURE_WORLD_ENABLED
    | GUEST_FLAG_LAPIC_PASSTHROUGH
    | GUEST_FLAG_RT
    | GUEST_FLAG_IO_COMPLETION_POLLING
    | GUEST_FLAG_PMU_PASSTHROUGH
)

# SET_IRQLINE: the u64 argument is {u32 gsi; u32 op} by value (hypervisor vioapic.c).
GSI_SET_HIGH: Final = 0
GSI_SET_LOW: Final = 1
GSI_RAISING_PULSE: Final = 2
GSI_FALLING_PULSE: Final = 3


def irqline_value(gsi: int, op: int) -> int:
    """Pack the SET_IRQLINE by-value argument: GSI in bits 31:0, operation in bits 63:32."""
    return ((op & 0xFFFFFFFF) << 32) | (gsi & 0xFFFFFFFF)


# PM_GET_CPU_STATE command word (hypervisor acrn_common.h).
PMCMD_VMID_MASK: Final = 0xFF000000
PMCMD_VCPUID_MASK: Final = 0x00FF0000
PMCMD_STATE_NUM_MASK: Final = 0x0000FF00
PMCMD_VMID_SHIFT: Final = 24
PMCMD_VCPUID_SHIFT: Final = 16
PMCMD_STATE_NUM_SHIFT: Final = 8


def pm_cmd(vmid: int, vcpu_id: int, state_num: int, cmd_type: int) -> int:
    """Build the PM_GET_CPU_STATE command word (vmid 31:24, vcpu 23:16, state 15:8, type 7:0)."""
    return (
        ((vmid & 0xFF) << PMCMD_VMID_SHIFT)
        | ((vcpu_id & 0xFF) << PMCMD_VCPUID_SHIFT)
        | ((state_num & 0xFF) << PMCMD_STATE_NUM_SHIFT)
        | (cmd_type & PMCMD_TYPE_MASK)
    )


# VM_INTR_MONITOR page commands (hypervisor acrn_common.h).
INTR_CMD_GET_DATA: Final = 0
INTR_CMD_DELAY_INT: Final = 1
MAX_PTDEV_NUM: Final = 24

# --------------------------------------------------------------------------------------------
# Hypercall IDs (drivers/virt/acrn/hypercall.h; hypervisor acrn_hv_defs.h)
# --------------------------------------------------------------------------------------------
HC_ID: Final = 0x80
HC_ID_GEN_BASE: Final = 0x00
HC_ID_VM_BASE: Final = 0x10
HC_ID_IRQ_BASE: Final = 0x20
HC_ID_IOREQ_BASE: Final = 0x30
HC_ID_MEM_BASE: Final = 0x40
HC_ID_PCI_BASE: Final = 0x50
HC_ID_DBG_BASE: Final = 0x60
HC_ID_TRUSTY_BASE: Final = 0x70
HC_ID_PM_BASE: Final = 0x80
HC_ID_TEE_BASE: Final = 0x90


def _HC_ID(x: int, y: int) -> int:
    return (x << 24) | y


HC_GET_API_VERSION: Final = _HC_ID(HC_ID, HC_ID_GEN_BASE + 0x00)
HC_SOS_REMOVE_CPU: Final = _HC_ID(HC_ID, HC_ID_GEN_BASE + 0x01)
HC_SET_CALLBACK_VECTOR: Final = _HC_ID(HC_ID, HC_ID_GEN_BASE + 0x02)
HC_CREATE_VM: Final = _HC_ID(HC_ID, HC_ID_VM_BASE + 0x00)
HC_DESTROY_VM: Final = _HC_ID(HC_ID, HC_ID_VM_BASE + 0x01)
HC_START_VM: Final = _HC_ID(HC_ID, HC_ID_VM_BASE + 0x02)
HC_PAUSE_VM: Final = _HC_ID(HC_ID, HC_ID_VM_BASE + 0x03)
HC_CREATE_VCPU: Final = _HC_ID(HC_ID, HC_ID_VM_BASE + 0x04)
HC_RESET_VM: Final = _HC_ID(HC_ID, HC_ID_VM_BASE + 0x05)
HC_SET_VCPU_REGS: Final = _HC_ID(HC_ID, HC_ID_VM_BASE + 0x06)
HC_INJECT_MSI: Final = _HC_ID(HC_ID, HC_ID_IRQ_BASE + 0x03)
HC_VM_INTR_MONITOR: Final = _HC_ID(HC_ID, HC_ID_IRQ_BASE + 0x04)
HC_SET_IRQLINE: Final = _HC_ID(HC_ID, HC_ID_IRQ_BASE + 0x05)
HC_SET_IOREQ_BUFFER: Final = _HC_ID(HC_ID, HC_ID_IOREQ_BASE + 0x00)
HC_NOTIFY_REQUEST_FINISH: Final = _HC_ID(HC_ID, HC_ID_IOREQ_BASE + 0x01)
HC_ASYNCIO_ASSIGN: Final = _HC_ID(HC_ID, HC_ID_IOREQ_BASE + 0x02)
HC_ASYNCIO_DEASSIGN: Final = _HC_ID(HC_ID, HC_ID_IOREQ_BASE + 0x03)
HC_VM_GPA2HPA: Final = _HC_ID(HC_ID, HC_ID_MEM_BASE + 0x01)
HC_VM_SET_MEMORY_REGIONS: Final = _HC_ID(HC_ID, HC_ID_MEM_BASE + 0x02)
HC_VM_WRITE_PROTECT_PAGE: Final = _HC_ID(HC_ID, HC_ID_MEM_BASE + 0x03)
HC_SETUP_SBUF: Final = _HC_ID(HC_ID, HC_ID_MEM_BASE + 0x04)
HC_SET_PTDEV_INTR: Final = _HC_ID(HC_ID, HC_ID_PCI_BASE + 0x03)
HC_RESET_PTDEV_INTR: Final = _HC_ID(HC_ID, HC_ID_PCI_BASE + 0x04)
HC_ASSIGN_PCIDEV: Final = _HC_ID(HC_ID, HC_ID_PCI_BASE + 0x05)
HC_DEASSIGN_PCIDEV: Final = _HC_ID(HC_ID, HC_ID_PCI_BASE + 0x06)
HC_ASSIGN_MMIODEV: Final = _HC_ID(HC_ID, HC_ID_PCI_BASE + 0x07)
HC_DEASSIGN_MMIODEV: Final = _HC_ID(HC_ID, HC_ID_PCI_BASE + 0x08)
HC_CREATE_VDEV: Final = _HC_ID(HC_ID, HC_ID_PCI_BASE + 0x09)
HC_DESTROY_VDEV: Final = _HC_ID(HC_ID, HC_ID_PCI_BASE + 0x0A)
HC_PM_GET_CPU_STATE: Final = _HC_ID(HC_ID, HC_ID_PM_BASE + 0x00)

#: Every hypercall ID above: name -> value.
HYPERCALLS: Final[dict[str, int]] = {
    name: value
    for name, value in globals().items()
    if name.startswith("HC_") and not name.startswith("HC_ID")
}
HYPERCALL_NAMES: Final[dict[int, str]] = {v: k for k, v in HYPERCALLS.items()}

# HC_VM_SET_MEMORY_REGIONS payloads (drivers/virt/acrn/acrn_drv.h; hypervisor set_regions).
MR_ADD: Final = 0
MR_DEL: Final = 2
MR_MODIFY: Final = 3


class vm_memory_region_op(ctypes.LittleEndianStructure):
    """One region of a HC_VM_SET_MEMORY_REGIONS batch (32 bytes)."""

    _fields_ = [
        ("type", c_uint32),
        ("attr", c_uint32),
        ("user_vm_pa", c_uint64),
        ("service_vm_pa", c_uint64),
        ("size", c_uint64),
    ]


class vm_memory_region_batch(ctypes.LittleEndianStructure):
    """The HC_VM_SET_MEMORY_REGIONS header (24 bytes): vmid, regions_num, GPA of the regions."""

    _fields_ = [
        ("vmid", c_uint16),
        ("reserved", c_uint16 * 3),
        ("regions_num", c_uint32),
        ("reserved1", c_uint32),
        ("regions_gpa", c_uint64),
    ]


#: How each ioctl takes its argument: a struct type (passed by pointer), ``"value"`` (an integer
#: passed by value: SET_IRQLINE's packed u64, VM_INTR_MONITOR's page address), ``"u64ptr"``
#: (PM_GET_CPU_STATE: a pointer to a u64 command word, with up to 48 bytes written back) or
#: ``None`` (``_IO``: the argument is ignored).
IOCTL_ARG: Final[dict[int, type[ctypes.Structure] | str | None]] = {
    ACRN_IOCTL_CREATE_VM: acrn_vm_creation,
    ACRN_IOCTL_DESTROY_VM: None,
    ACRN_IOCTL_START_VM: None,
    ACRN_IOCTL_PAUSE_VM: None,
    ACRN_IOCTL_RESET_VM: None,
    ACRN_IOCTL_SET_VCPU_REGS: acrn_vcpu_regs,
    ACRN_IOCTL_INJECT_MSI: acrn_msi_entry,
    ACRN_IOCTL_VM_INTR_MONITOR: "value",
    ACRN_IOCTL_SET_IRQLINE: "value",
    ACRN_IOCTL_NOTIFY_REQUEST_FINISH: acrn_ioreq_notify,
    ACRN_IOCTL_CREATE_IOREQ_CLIENT: None,
    ACRN_IOCTL_ATTACH_IOREQ_CLIENT: None,
    ACRN_IOCTL_DESTROY_IOREQ_CLIENT: None,
    ACRN_IOCTL_CLEAR_VM_IOREQ: None,
    ACRN_IOCTL_SET_MEMSEG: acrn_vm_memmap,
    ACRN_IOCTL_UNSET_MEMSEG: acrn_vm_memmap,
    ACRN_IOCTL_SET_PTDEV_INTR: acrn_ptdev_irq,
    ACRN_IOCTL_RESET_PTDEV_INTR: acrn_ptdev_irq,
    ACRN_IOCTL_ASSIGN_PCIDEV: acrn_pcidev,
    ACRN_IOCTL_DEASSIGN_PCIDEV: acrn_pcidev,
    ACRN_IOCTL_ASSIGN_MMIODEV: acrn_mmiodev,
    ACRN_IOCTL_DEASSIGN_MMIODEV: acrn_mmiodev,
    ACRN_IOCTL_CREATE_VDEV: acrn_vdev,
    ACRN_IOCTL_DESTROY_VDEV: acrn_vdev,
    ACRN_IOCTL_PM_GET_CPU_STATE: "u64ptr",
    ACRN_IOCTL_IOEVENTFD: acrn_ioeventfd,
    ACRN_IOCTL_IRQFD: acrn_irqfd,
}


def decode(obj: ctypes.Structure | ctypes.Union | ctypes.Array[ctypes._CData]) -> object:
    """A ctypes value as plain Python data (dicts, lists, ints), for traces and JSON."""
    if isinstance(obj, ctypes.Array):
        return [
            decode(x) if isinstance(x, ctypes.Structure | ctypes.Union | ctypes.Array) else x for x in obj
        ]
    out: dict[str, object] = {}
    for name, *_ in obj._fields_:
        if name.startswith("_"):
            continue
        v = getattr(obj, name)
        out[name] = decode(v) if isinstance(v, ctypes.Structure | ctypes.Union | ctypes.Array) else v
    return out
