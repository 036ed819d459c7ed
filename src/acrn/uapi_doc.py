"""The ABI reference page, ``docs/abi.md``: every struct of ``linux/acrn.h`` field by field.

Offsets, sizes, types, alignment and padding come from :mod:`acrn.uapi` through ctypes (whose
layouts ``tests/test_uapi_layout.py`` proves equal to the C header); the meaning of each field and
what the HSM driver and the hypervisor check in it are written here, in one place, so that
``uapi.py`` stays a plain transcription of the header.  Regenerate the page with::

    python -m acrn.uapi_doc > docs/abi.md

``tests/test_uapi_doc.py`` fails when the checked-in page differs from what this module renders,
or when a field of :data:`acrn.uapi.STRUCTS` has no description.

Sources named below: the Linux HSM driver ``drivers/virt/acrn/`` (``hsm.c``, ``ioreq.c``,
``mm.c``, ``ioeventfd.c``, ``irqfd.c``) and, in projectacrn/acrn-hypervisor,
``hypervisor/common/hypercall.c`` (the ``hcall_*`` handlers) and ``hypervisor/dm/io_req.c``.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Any, Final

from acrn import uapi

_HSM: Final = "`drivers/virt/acrn/hsm.c: acrn_dev_ioctl`"


@dataclass(frozen=True)
class StructDoc:
    """What a struct is for, who reads it, and the rule for its reserved fields (padding is computed)."""

    purpose: str
    reserved: str
    fields: dict[str, str]


#: Every struct of ``uapi.STRUCTS``: its purpose, reserved-byte rule and one line per field path
#: (nested anonymous members as ``outer.inner``; named struct members appear as one row).
STRUCTS: Final[dict[str, StructDoc]] = {
    "acrn_vm_creation": StructDoc(
        "Argument of CREATE_VM (read and written back). The driver issues HC_CREATE_VM "
        "(`hypervisor/common/hypercall.c: hcall_create_vm`), then HC_SET_IOREQ_BUFFER.",
        "`reserved0` and `reserved1` must be 0, else EINVAL from " + _HSM + " before any hypercall.",
        {
            "vmid": "Out: the VM id the hypervisor assigned (relative to the Service VM). Ignored on input.",
            "reserved0": "Must be 0 (HSM: EINVAL).",
            "vcpu_num": "Out: number of vCPUs created (popcount of the effective `cpu_affinity`).",
            "reserved1": "Must be 0 (HSM: EINVAL).",
            "uuid": "16 bytes that ACRN reads as a NUL-terminated VM name (`MAX_VM_NAME_LEN` 16): a "
            "configured slot of that name, else a free dynamic slot, else ENOTTY. Historically a UUID.",
            "vm_flag": "`GUEST_FLAG_*` bits. The hypervisor keeps only `DM_OWNED_GUEST_FLAG_MASK` for a "
            "post-launched VM; LAPIC_PASSTHROUGH needs RT.",
            "ioreq_buf": "User virtual address of the 4 KiB ioreq page (`acrn_io_request_buffer`). The "
            "driver pins it (offset in the page dropped); not pinnable → EINVAL after destroying the VM.",
            "cpu_affinity": "Bitmap of pCPUs. Must be a subset of the slot's configured pCPUs, else the "
            "hypercall fails (EINVAL from the driver).",
        },
    ),
    "acrn_gp_regs": StructDoc(
        "The 16 general-purpose registers, part of `acrn_regs`. `set_vcpu_regs` "
        "(`hypervisor/arch/x86/guest/vcpu.c`) copies them as one block.",
        "No reserved fields; nothing is checked.",
        {
            name: f"Initial {name.upper()}, copied unchanged."
            + (" Set again after RIP and EFER." if name == "rsp" else "")
            for name in (
                "rax",
                "rcx",
                "rdx",
                "rbx",
                "rsp",
                "rbp",
                "rsi",
                "rdi",
                "r8",
                "r9",
                "r10",
                "r11",
                "r12",
                "r13",
                "r14",
                "r15",
            )
        },
    ),
    "acrn_descriptor_ptr": StructDoc(
        "A GDTR or IDTR image inside `acrn_regs`. `__attribute__((packed))` in the header, so `base` "
        "sits at offset 2, unaligned.",
        "`reserved[0..2]` must be 0: the driver checks `gdt.reserved[i] | idt.reserved[i]` for each i, "
        "after the other reserved fields of `acrn_vcpu_regs` (EINVAL).",
        {
            "limit": "Table limit (bytes - 1). Landed unchanged.",
            "base": "Table linear base address. Landed unchanged, not checked.",
            "reserved": "Must be 0 (HSM: EINVAL).",
        },
    ),
    "acrn_regs": StructDoc(
        "A vCPU's initial register state, the body of `acrn_vcpu_regs`. The hypervisor lands it with "
        "`set_vcpu_regs` (`hypervisor/arch/x86/guest/vcpu.c`); pyacrn's reading of that function is "
        "`acrn.rules.land_vcpu_regs`. Note the control-register order: cr0, cr4, cr3.",
        "`reserved_32[0..2]` and `reserved_64[0..3]` must be 0 (HSM: EINVAL, `reserved_32` checked before "
        "`reserved_64`).",
        {
            "gprs": "General-purpose registers, see `acrn_gp_regs`.",
            "gdt": "GDTR, see `acrn_descriptor_ptr`.",
            "idt": "IDTR, see `acrn_descriptor_ptr`.",
            "rip": "Initial RIP. Not checked.",
            "cs_base": "CS base; the only segment whose base can be set (all others land with base 0).",
            "cr0": "Checked by `is_valid_cr0_cr4` (`hypervisor/arch/x86/guest/virtual_cr.c`) against the "
            "VMX FIXED MSRs (on usual hardware NE must be 1 and bits 63:32 0), else the hypercall fails "
            "(EPERM). CR0.PE chooses the default limit/AR of every segment. Applied at the first entry.",
            "cr4": "Checked by `is_valid_cr0_cr4`: VMXE, SMXE, CET and unsupported bits must be 0 (EPERM). "
            "Stored raw; applied at the first entry with VMXE, SMXE and MCE masked off.",
            "cr3": "Stored raw, written at the first entry. Not checked.",
            "ia32_efer": "Landed unchanged. LMA with CS.L (bit 13 of `cs_ar`) means 64-bit mode, "
            "LMA without it compatibility mode.",
            "rflags": "0 lands as 0x2. Any other value loses CF, PF, AF, ZF, SF and OF (mask 0x8D5); "
            "bit 1 is not forced on.",
            "reserved_64": "Must be 0 (HSM: EINVAL).",
            "cs_ar": "CS access rights in VMX format (type, S, DPL, P, AVL, L, D/B, G). Landed unchanged.",
            "cs_limit": "CS limit. Landed unchanged.",
            "reserved_32": "Must be 0 (HSM: EINVAL).",
            "cs_sel": "CS selector. Stored; base, limit and AR come from the fields above, not the GDT.",
            "ss_sel": "SS selector. SS lands with base 0 and the limit/AR chosen by CR0.PE "
            "(0xFFFFFFFF/0xC093 or 0xFFFF/0x0093).",
            "ds_sel": "DS selector, landed as `ss_sel`.",
            "es_sel": "ES selector, landed as `ss_sel`.",
            "fs_sel": "FS selector, landed as `ss_sel`.",
            "gs_sel": "GS selector, landed as `ss_sel`.",
            "ldt_sel": "LDTR selector; LDTR lands with base 0, limit 0xFFFF, AR 0x0082 whatever is passed.",
            "tr_sel": "TR selector; TR lands with base 0, limit 0xFFFF, AR 0x008B (busy TSS).",
        },
    ),
    "acrn_vcpu_regs": StructDoc(
        "Argument of SET_VCPU_REGS. The driver checks the reserved fields, then issues HC_SET_VCPU_REGS "
        "(`hypervisor/common/hypercall.c: hcall_set_vcpu_regs`): VM not POWERED_OFF and not RUNNING, "
        "`vcpu_id` below the pCPU count, vCPU not offline, `is_valid_cr0_cr4`; any failure is -1 (EPERM).",
        "`reserved[0..2]` must be 0 and is checked first (EINVAL). The hypervisor never reads the reserved "
        "fields. The tail padding of `acrn_regs` is inside `vcpu_regs`.",
        {
            "vcpu_id": "Target vCPU. Must be below the platform's pCPU count (MAX_VCPUS_PER_VM), not the "
            "VM's vCPU count, and the vCPU must exist (else EPERM).",
            "reserved": "Must be 0 (HSM: EINVAL, checked first).",
            "vcpu_regs": "The registers, see `acrn_regs`.",
        },
    ),
    "acrn_io_request": StructDoc(
        "One slot of the shared ioreq page: the I/O request of the vCPU with that index. The hypervisor "
        "(`hypervisor/dm/io_req.c: acrn_insert_request`) fills it and sets PENDING; the HSM "
        "(`drivers/virt/acrn/ioreq.c`) dispatches it to a client (PROCESSING); the device model answers "
        "and NOTIFY_REQUEST_FINISH sets COMPLETE.",
        "`reserved0` and `reserved1` are never checked. `__attribute__((aligned(256)))` adds 116 bytes "
        "of tail padding that make each slot 256 bytes; pyacrn spells them `_align_pad` (ctypes cannot "
        "align a struct beyond its members: ctypes alignment is 8, offsets and size match C).",
        {
            "type": "`ACRN_IOREQ_TYPE_PORTIO` 0, `_MMIO` 1 or `_PCICFG` 2 (the HSM turns port 0xCFC-0xCFF "
            "accesses into PCICFG).",
            "completion_polling": "1 if the VM was created with IO_COMPLETION_POLLING: the hypervisor polls "
            "`processed` instead of waiting for NOTIFY_REQUEST_FINISH's hypercall.",
            "reserved0": "Unused.",
            "reqs": "The request; which member is valid depends on `type`.",
            "reqs.pio_request": "Port I/O request, see `acrn_pio_request`.",
            "reqs.pci_request": "PCI configuration request, see `acrn_pci_request`.",
            "reqs.mmio_request": "MMIO request, see `acrn_mmio_request`.",
            "reqs.data": "The union as raw 64-bit words.",
            "reserved1": "Unused.",
            "kernel_handled": "Set by the HSM when an in-kernel client (ioeventfd, PCI CF8) handled it "
            "(an int32 on the hypervisor's side).",
            "processed": "Slot state: PENDING 0, COMPLETE 1, PROCESSING 2, FREE 3. The HSM reads it with "
            "acquire and writes it with release semantics.",
            "_align_pad": "Tail padding from `aligned(256)`.",
        },
    ),
    "acrn_mmio_request": StructDoc(
        "An MMIO access inside `acrn_io_request.reqs`.",
        "`reserved` is never checked.",
        {
            "direction": "`ACRN_IOREQ_DIR_READ` 0 or `_WRITE` 1.",
            "reserved": "Unused.",
            "address": "Guest physical address.",
            "size": "Access size in bytes (1, 2, 4 or 8).",
            "value": "Written value, or the value the device model returns for a read (64-bit).",
        },
    ),
    "acrn_pio_request": StructDoc(
        "A port I/O access inside `acrn_io_request.reqs`. Its first 28 bytes match `acrn_pci_request`.",
        "`reserved` is never checked.",
        {
            "direction": "`ACRN_IOREQ_DIR_READ` 0 or `_WRITE` 1.",
            "reserved": "Unused.",
            "address": "I/O port.",
            "size": "Access size in bytes (1, 2 or 4).",
            "value": "Written value, or the value returned for a read (32-bit).",
        },
    ),
    "acrn_pci_request": StructDoc(
        "A PCI configuration access inside `acrn_io_request.reqs`, built by the HSM from a 0xCFC-0xCFF "
        "access with the enable bit of the stored 0xCF8 value set (`drivers/virt/acrn/ioreq.c: "
        "handle_cf8cfc`).",
        "`reserved[0..2]` are never checked.",
        {
            "direction": "`ACRN_IOREQ_DIR_READ` 0 or `_WRITE` 1.",
            "reserved": "Unused (where `acrn_pio_request` has `reserved` and `address`).",
            "size": "Access size in bytes.",
            "value": "Written value, or the value returned for a read.",
            "bus": "Bus number from 0xCF8.",
            "dev": "Device number from 0xCF8.",
            "func": "Function number from 0xCF8.",
            "reg": "Register offset: 0xCF8's register bits plus the byte offset within 0xCFC-0xCFF.",
        },
    ),
    "acrn_io_request_buffer": StructDoc(
        "The 4 KiB ioreq page shared by the hypervisor, the HSM and the device model: 16 slots "
        "(`ACRN_IO_REQUEST_MAX`), slot index = vCPU id. Its address is `acrn_vm_creation.ioreq_buf`.",
        "A union; `reserved` only gives the page its size.",
        {
            "u": "The page (anonymous union).",
            "u.req_slot": "The 16 slots, see `acrn_io_request`.",
            "u.reserved": "The page as bytes.",
        },
    ),
    "acrn_ioreq_notify": StructDoc(
        "Argument of NOTIFY_REQUEST_FINISH (`drivers/virt/acrn/ioreq.c: acrn_ioreq_request_default_complete`).",
        "`reserved` must be 0 (HSM: EINVAL).",
        {
            "vmid": "Ignored: the fd's VM is used.",
            "reserved": "Must be 0 (HSM: EINVAL).",
            "vcpu": "The slot to complete; truncated to 16 bits, at or above the VM's vCPU count → EINVAL. "
            "The slot's state is not checked: it is set COMPLETE and the hypervisor notified.",
        },
    ),
    "acrn_vm_memmap": StructDoc(
        "Argument of SET_MEMSEG and UNSET_MEMSEG (`drivers/virt/acrn/mm.c: acrn_vm_memseg_map`, "
        "`acrn_vm_memseg_unmap`), sent on as HC_VM_SET_MEMORY_REGIONS.",
        "No reserved fields.",
        {
            "type": "`ACRN_MEMMAP_RAM` 0 or `_MMIO` 1, else EINVAL. UNSET_MEMSEG accepts MMIO only.",
            "attr": "`ACRN_MEM_ACCESS_*` rights; the memory-type bits are replaced (RAM WB, MMIO UC).",
            "user_vm_pa": "Guest physical address of the region.",
            "u": "Anonymous union: the source of the region.",
            "u.service_vm_pa": "MMIO: Service VM physical address.",
            "u.vma_base": "RAM: user virtual address of the backing memory, pinned for write (EFAULT if "
            "it cannot be).",
            "len": "Length in bytes; RAM: truncated to whole pages, 0 → EINVAL. The hypervisor requires a "
            "multiple of 4 KiB.",
        },
    ),
    "acrn_ptdev_irq": StructDoc(
        "Argument of SET_PTDEV_INTR and RESET_PTDEV_INTR (`hcall_set_ptdev_intr_info`, "
        "`hcall_reset_ptdev_intr_info`). The driver copies it unchecked.",
        "No reserved fields. The hypervisor reads `intx.is_pic_pin` as a `bool` followed by "
        "3 reserved bytes.",
        {
            "type": "`ACRN_PTDEV_IRQ_INTX` 0 (the only type the hypervisor accepts), `_MSI` 1, `_MSIX` 2.",
            "virt_bdf": "Virtual bus/device/function of the assigned device.",
            "phys_bdf": "Physical bus/device/function; must match the assignment.",
            "intx": "The INTx mapping (anonymous struct).",
            "intx.virt_pin": "Virtual IOAPIC pin (or PIC pin if `is_pic_pin`); bounded by the controller.",
            "intx.phys_pin": "Physical GSI; must be valid on the board.",
            "intx.is_pic_pin": "Non-zero: `virt_pin` is a PIC pin (< 16).",
        },
    ),
    "acrn_pcidev": StructDoc(
        "Argument of ASSIGN_PCIDEV and DEASSIGN_PCIDEV (`hcall_assign_pcidev`, `hcall_deassign_pcidev`).",
        "No reserved fields.",
        {
            "type": "`ACRN_PTDEV_QUIRK_ASSIGN` (bit 0) or 0.",
            "virt_bdf": "Virtual bus/device/function in the User VM.",
            "phys_bdf": "Physical bus/device/function owned by the Service VM.",
            "intr_line": "Legacy interrupt line for the virtual device.",
            "intr_pin": "Legacy interrupt pin for the virtual device.",
            "bar": "The six BARs of the device.",
        },
    ),
    "acrn_mmiodev": StructDoc(
        "Argument of ASSIGN_MMIODEV and DEASSIGN_MMIODEV (`hcall_assign_mmiodev`, `hcall_deassign_mmiodev`).",
        "No reserved fields.",
        {
            "name": "Device name (8 bytes).",
            "res": "Up to three MMIO resources (`ACRN_MMIODEV_RES_NUM`), each of:",
            "res.user_vm_pa": "Guest physical address (page aligned).",
            "res.service_vm_pa": "Service VM physical address (page aligned; `host_pa` in the hypervisor).",
            "res.size": "Size in bytes (page aligned).",
            "res.mem_type": "Memory type for the mapping.",
        },
    ),
    "acrn_vdev": StructDoc(
        "Argument of CREATE_VDEV and DESTROY_VDEV (`hcall_add_vdev`, `hcall_remove_vdev`): a "
        "virtual device the hypervisor emulates (ivshmem, MCS9900 vUART, virtual root port).",
        "No reserved fields.",
        {
            "id": "Device identity (anonymous union).",
            "id.value": "The identity as one u64.",
            "id.fields": "The identity as fields:",
            "id.fields.vendor": "PCI vendor id.",
            "id.fields.device": "PCI device id.",
            "id.fields.legacy_id": "Legacy device id.",
            "slot": "Virtual BDF in the low 16 bits.",
            "io_addr": "BAR addresses.",
            "io_size": "BAR sizes.",
            "args": "Device-specific arguments (e.g. the ivshmem region name).",
        },
    ),
    "acrn_msi_entry": StructDoc(
        "Argument of INJECT_MSI (`hcall_inject_msi`), and the MSI of `acrn_irqfd`.",
        "No reserved fields.",
        {
            "msi_addr": "MSI address; bits 31:20 must be 0xFEE, else the hypercall fails (EPERM).",
            "msi_data": "MSI data (vector, delivery mode, trigger).",
        },
    ),
    "acrn_acpi_generic_address": StructDoc(
        "ACPI Generic Address Structure inside `acrn_cstate_data`. `__attribute__((packed))`.",
        "No reserved fields.",
        {
            "space_id": "Address space (0 memory, 1 I/O, 0x7F functional fixed hardware).",
            "bit_width": "Register width in bits.",
            "bit_offset": "Bit offset within the register.",
            "access_size": "Access size (ACPI encoding).",
            "address": "Register address (unaligned at offset 4).",
        },
    ),
    "acrn_cstate_data": StructDoc(
        "One C-state, written back by PM_GET_CPU_STATE(GET_CX_DATA) (`hcall_get_cpu_pm_state`).",
        "No reserved fields; written by the hypervisor.",
        {
            "cx_reg": "Register to enter the state, see `acrn_acpi_generic_address`.",
            "type": "C-state type (1 = C1, ...).",
            "latency": "Worst-case latency in µs.",
            "power": "Average power in mW.",
        },
    ),
    "acrn_pstate_data": StructDoc(
        "One P-state, written back by PM_GET_CPU_STATE(GET_PX_DATA).",
        "No reserved fields; written by the hypervisor.",
        {
            "core_frequency": "Core frequency in MHz.",
            "power": "Power in mW.",
            "transition_latency": "Transition latency in µs.",
            "bus_master_latency": "Bus-master latency in µs.",
            "control": "Value to write to enter the state.",
            "status": "Status value read back in the state.",
        },
    ),
    "acrn_ioeventfd": StructDoc(
        "Argument of IOEVENTFD (`drivers/virt/acrn/ioeventfd.c: acrn_ioeventfd_config`); handled in the "
        "kernel, no hypercall.",
        "`reserved` must be 0, for DEASSIGN too (EINVAL).",
        {
            "fd": "An eventfd (bad fd → EBADF, not an eventfd → EINVAL).",
            "flags": "`ACRN_IOEVENTFD_FLAG_PIO` (else MMIO), `_DATAMATCH`, `_DEASSIGN`; other bits ignored.",
            "addr": "Start address (port or guest physical); `addr + len` must not overflow (EINVAL).",
            "len": "1, 2, 4 or 8, else EINVAL.",
            "reserved": "Must be 0 (HSM: EINVAL).",
            "data": "With DATAMATCH, the value a write must carry to signal.",
        },
    ),
    "acrn_irqfd": StructDoc(
        "Argument of IRQFD (`drivers/virt/acrn/irqfd.c: acrn_irqfd_config`): each signal of the eventfd "
        "becomes HC_INJECT_MSI with `msi`.",
        "No reserved fields.",
        {
            "fd": "An eventfd (bad fd → EBADF, not an eventfd → EINVAL, already assigned → EBUSY).",
            "flags": "`ACRN_IRQFD_FLAG_DEASSIGN` (bit 0); other bits ignored.",
            "msi": "The MSI to inject, see `acrn_msi_entry`.",
        },
    ),
}

#: The hypercalls each ioctl issues (``drivers/virt/acrn/hsm.c`` and the files it calls into).
IOCTL_HYPERCALLS: Final[dict[str, str]] = {
    "CREATE_VM": "HC_CREATE_VM, then HC_SET_IOREQ_BUFFER",
    "DESTROY_VM": "HC_DESTROY_VM",
    "START_VM": "HC_START_VM",
    "PAUSE_VM": "HC_PAUSE_VM",
    "RESET_VM": "HC_RESET_VM",
    "SET_VCPU_REGS": "HC_SET_VCPU_REGS",
    "INJECT_MSI": "HC_INJECT_MSI",
    "VM_INTR_MONITOR": "HC_VM_INTR_MONITOR",
    "SET_IRQLINE": "HC_SET_IRQLINE",
    "NOTIFY_REQUEST_FINISH": "HC_NOTIFY_REQUEST_FINISH (unless polling)",
    "CREATE_IOREQ_CLIENT": "none (kernel only)",
    "ATTACH_IOREQ_CLIENT": "none (blocks in the kernel)",
    "DESTROY_IOREQ_CLIENT": "none",
    "CLEAR_VM_IOREQ": "HC_NOTIFY_REQUEST_FINISH per completed request",
    "SET_MEMSEG": "HC_VM_SET_MEMORY_REGIONS",
    "UNSET_MEMSEG": "HC_VM_SET_MEMORY_REGIONS",
    "SET_PTDEV_INTR": "HC_SET_PTDEV_INTR",
    "RESET_PTDEV_INTR": "HC_RESET_PTDEV_INTR",
    "ASSIGN_PCIDEV": "HC_ASSIGN_PCIDEV",
    "DEASSIGN_PCIDEV": "HC_DEASSIGN_PCIDEV",
    "ASSIGN_MMIODEV": "HC_ASSIGN_MMIODEV",
    "DEASSIGN_MMIODEV": "HC_DEASSIGN_MMIODEV",
    "CREATE_VDEV": "HC_CREATE_VDEV",
    "DESTROY_VDEV": "HC_DESTROY_VDEV",
    "PM_GET_CPU_STATE": "HC_PM_GET_CPU_STATE (not for unknown types)",
    "IOEVENTFD": "none (kernel only)",
    "IRQFD": "none at configuration; HC_INJECT_MSI on each signal",
}

_SCALARS: Final[dict[type, str]] = {
    ctypes.c_uint8: "__u8",
    ctypes.c_uint16: "__u16",
    ctypes.c_uint32: "__u32",
    ctypes.c_uint64: "__u64",
    ctypes.c_int32: "__s32",
}


@dataclass(frozen=True)
class Row:
    """One line of a struct's table: a field (or padding) at an absolute offset."""

    offset: int
    size: int
    ctype: str
    path: str
    byte_order: str


def _scalar_name(t: Any) -> str | None:
    for base, name in _SCALARS.items():
        if t is base or issubclass(t, base):
            return name
    return None


def _type_name(t: Any) -> str:
    if issubclass(t, ctypes.Array):
        return f"{_type_name(t._type_)}[{t._length_}]"
    scalar = _scalar_name(t)
    if scalar is not None:
        return scalar
    kind = "union" if issubclass(t, ctypes.Union) else "struct"
    return f"{kind} {t.__name__}" if not t.__name__.startswith("_") else kind


def _byte_order(t: Any) -> str:
    while issubclass(t, ctypes.Array):
        t = t._type_
    if issubclass(t, ctypes.Structure | ctypes.Union):
        return "(members)"
    return "n/a" if ctypes.sizeof(t) == 1 else "little-endian"


def _is_anonymous(t: Any) -> bool:
    while issubclass(t, ctypes.Array):
        t = t._type_
    return issubclass(t, ctypes.Structure | ctypes.Union) and t.__name__.startswith("_")


def _element(t: Any) -> Any:
    while issubclass(t, ctypes.Array):
        t = t._type_
    return t


def rows(struct: type[ctypes.Structure] | type[ctypes.Union], base: int = 0, prefix: str = "") -> list[Row]:
    """The fields of ``struct`` at absolute offsets, anonymous members expanded, gaps as padding."""
    out: list[Row] = []
    end = 0
    for name, ftype, *_ in struct._fields_:
        desc = getattr(struct, name)
        off, size = int(desc.offset), int(desc.size)
        if off > end and not issubclass(struct, ctypes.Union):
            out.append(Row(base + end, off - end, "(padding)", f"{prefix}(padding)", "n/a"))
        path = f"{prefix}{name}"
        out.append(Row(base + off, size, _type_name(ftype), path, _byte_order(ftype)))
        if _is_anonymous(ftype):
            out.extend(rows(_element(ftype), base + off, path + "."))
        end = max(end, off + size)
    total = ctypes.sizeof(struct)
    if end < total and not prefix:
        out.append(Row(base + end, total - end, "(padding)", "(tail padding)", "n/a"))
    return out


def _padding_sentence(struct: type[ctypes.Structure]) -> str:
    pads = [r for r in rows(struct) if r.ctype == "(padding)"]
    if not pads:
        return "No implicit padding."
    where = ", ".join(f"{r.offset}..{r.offset + r.size - 1}" for r in pads)
    return f"Implicit padding at bytes {where}: never checked by the driver or the hypervisor; send zeros."


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _ioctl_table() -> list[str]:
    lines = [
        "| ioctl | nr | direction | encoded size | number | argument | hypercalls issued |",
        "|---|---|---|---|---|---|---|",
    ]
    dirs = {0: "none", 1: "W", 2: "R", 3: "RW"}
    for full, cmd in uapi.IOCTLS.items():
        name = full.removeprefix("ACRN_IOCTL_")
        arg = uapi.IOCTL_ARG[cmd]
        if arg is None:
            arg_text = "none (ignored)"
        elif arg == "value":
            arg_text = "an integer, by value"
        elif arg == "u64ptr":
            arg_text = "pointer to a u64 command word"
        else:
            assert isinstance(arg, type)
            arg_text = f"[`{arg.__name__}`](#{arg.__name__})"
        lines.append(
            f"| {name} | 0x{uapi.ioc_nr(cmd):02X} | {dirs[uapi.ioc_dir(cmd)]} | {uapi.ioc_size(cmd)} "
            f"| `0x{cmd:08X}` | {arg_text} | {IOCTL_HYPERCALLS[name]} |"
        )
    return lines


def render() -> str:
    """The whole page, as checked in at ``docs/abi.md``."""
    out = [
        "# The ABI of `linux/acrn.h`, field by field",
        "",
        "<!-- Generated by `python -m acrn.uapi_doc > docs/abi.md` from `acrn.uapi` (layouts) and",
        "     `acrn.uapi_doc` (descriptions). Do not edit by hand: tests/test_uapi_doc.py compares. -->",
        "",
        "Every structure the HSM ioctls (`/dev/acrn_hsm`, ioctl type 0xA2) take, for x86-64. Offsets and sizes",
        "are in bytes and come from `acrn.uapi`, whose layouts `tests/test_uapi_layout.py` proves equal to",
        "the C header by compiling a probe against `<linux/acrn.h>` with gcc. What each ioctl does, checks",
        "and returns is in [ioctls.md](ioctls.md); where pyacrn's emulator differs, [differences.md](differences.md).",
        "",
        "## Rules common to every structure",
        "",
        "* **Byte order.** The header declares the fields `__le*`: every multi-byte field is little-endian.",
        "  pyacrn's structures are `ctypes.LittleEndianStructure`, so the encoding does not depend on the host.",
        "* **Alignment.** Natural x86-64 alignment (each field at a multiple of its size, the struct a",
        "  multiple of its largest member), except `acrn_descriptor_ptr` and `acrn_acpi_generic_address`,",
        "  which are `__attribute__((packed))`, and `acrn_io_request`, which is `aligned(256)`.",
        "* **Reserved fields** (named `reserved*`) of an ioctl argument must be 0 where the table says the",
        f"  driver checks them: {_HSM} returns EINVAL before any hypercall. Reserved fields of the ioreq page",
        "  are never checked.",
        "* **Padding** (implicit gaps, listed as `(padding)` below) is never checked by the driver or the",
        "  hypervisor; send zeros.",
        "* **Who checks.** The HSM driver copies the argument, checks reserved fields and some arguments,",
        "  and maps any hypervisor failure to an errno (a bare -1 from the hypervisor becomes EPERM). The",
        "  hypervisor's handlers (`hypervisor/common/hypercall.c: hcall_*`) check states and values.",
        "",
        "## ioctl numbers",
        "",
        "`_IOC(dir, 0xA2, nr, size)` as in `asm-generic/ioctl.h`: direction in bits 31:30 (W = 1, R = 2),",
        "size in bits 29:16, type in bits 15:8, nr in bits 7:0. VM_INTR_MONITOR and SET_IRQLINE declare an",
        "8-byte argument but take it by value; PM_GET_CPU_STATE writes back up to 48 bytes through a number",
        "that encodes 8.",
        "",
        *_ioctl_table(),
        "",
        "## Structures",
    ]
    for struct in uapi.STRUCTS:
        name = struct.__name__
        doc = STRUCTS[name]
        align = 256 if struct is uapi.acrn_io_request else ctypes.alignment(struct)
        packed = ", packed" if getattr(struct, "_pack_", 0) == 1 else ""
        out += [
            "",
            f'### `{name}` <a id="{name}"></a>',
            "",
            f"{ctypes.sizeof(struct)} bytes, alignment {align}{packed}. {doc.purpose}",
            "",
            f"**Reserved and padding.** {doc.reserved} {_padding_sentence(struct)}",
            "",
            "| offset | size | type | field | byte order | meaning and checks |",
            "|---:|---:|---|---|---|---|",
        ]
        for r in rows(struct):
            if r.ctype == "(padding)":
                field, meaning = r.path, "implicit padding: never read, send zeros"
            else:
                field, meaning = f"`{r.path}`", doc.fields[r.path]
            out.append(
                f"| {r.offset} | {r.size} | {_cell(r.ctype)} | {field} | {r.byte_order} | {_cell(meaning)} |"
            )
    return "\n".join(out) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
