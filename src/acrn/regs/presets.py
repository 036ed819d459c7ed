"""Ready-made SET_VCPU_REGS arguments: the states ACRN and acrn-dm's loaders give a BSP.

Each function returns the :class:`VcpuRegs` a loader passes to SET_VCPU_REGS (the ``acrn_sw_load_*``
functions of acrn-dm's ``devicemodel/core/sw_load_*.c``: every field they do not set is 0 and
``vcpu_id`` is 0), so the device-model loaders can call them with the real
layout parameters.  Non-CS segments are only selectors here: ACRN derives their base, limit and
access rights from CR0.PE (``acrn.rules.land_vcpu_regs``).  ``PRESETS`` maps a name to a function whose
parameters all have defaults, so ``acrn regs preset NAME`` works without arguments.

Known quirks, reported by :mod:`acrn.regs.validate` on purpose:
* ``elf``: cs_ar 0xCF9B sets the reserved access-rights bits 11:8 (``devicemodel/core/sw_load_elf.c:
  acrn_sw_load_elf``).
* ``reset``, ``ovmf``, ``vsbl``: real mode (CR0.PE = 0) is only enterable with the unrestricted-guest
  VMX control, which ACRN always uses (a warning, not an error).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from acrn import arch
from acrn.regs.model import DescriptorPtr, VcpuRegs

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

#: pyacrn's default guest low memory (acrn-dm: lowmem = min(memsize, 2 GiB); it must be a 2 MiB multiple).
DEFAULT_LOWMEM: Final = 256 * MiB
#: acrn-dm caps low memory at PCI_EMUL_MEMBASE32.
LOWMEM_LIMIT: Final = 2 * GiB

REAL_MODE_CODE_SEG_AR: Final = 0x009F
PROTECTED_MODE_CODE_SEG_AR: Final = 0xC09B
#: acrn-dm's ELF loader value: the GDT descriptor's flags byte (limit 19:16 included) used as AR
#: (acrn_sw_load_elf).
ELF_LOADER_CODE_SEG_AR: Final = 0xCF9B
LONG_MODE_CODE_SEG_AR: Final = 0xA09B

#: bzImage: the whole file is copied to 16 MiB (acrn-dm KERNEL_LOAD_OFF).
KERNEL_LOAD_OFF: Final = 16 * MiB
#: ELF multiboot: the boot-loader magic in EAX and the info block's GPA in EBX.
MULTIBOOT_BOOTLOADER_MAGIC: Final = 0x2BADB002
MULTIBOOT_INFO_GPA: Final = 0x20000
#: Default ELF entry: kvm-unit-tests / acrn-unit-test images are linked at 4 MiB.
DEFAULT_ELF_ENTRY: Final = 0x400000
#: vSBL image ends at 64 MiB, its reset vector at 64 MiB - 16: CS base 0x03FF0000 with IP 0xFFF0.
VSBL_CS_BASE: Final = 0x03FF0000


def _check_lowmem(lowmem: int) -> None:
    if lowmem <= 0 or lowmem % (2 * MiB):
        raise ValueError(f"lowmem: {lowmem:#x} must be a positive multiple of 2 MiB (acrn-dm hugepages)")
    if lowmem > LOWMEM_LIMIT:
        raise ValueError(f"lowmem: {lowmem:#x} exceeds acrn-dm's 2 GiB low-memory limit")


def _real_mode(cs_sel: int, cs_base: int, rip: int, table_limit: int) -> VcpuRegs:
    return VcpuRegs(
        cr0=arch.CR0_ET | arch.CR0_NE,
        cs_sel=cs_sel,
        cs_base=cs_base,
        cs_limit=0xFFFF,
        cs_ar=REAL_MODE_CODE_SEG_AR,
        rip=rip,
        gdt=DescriptorPtr(base=0, limit=table_limit),
        idt=DescriptorPtr(base=0, limit=table_limit),
    )


def reset(vcpu_id: int = 0) -> VcpuRegs:
    """The architectural reset state ACRN gives a new vCPU (``acrn.rules.reset_vcpu_state``), as a
    SET_VCPU_REGS input.

    CS 0xF000 with base 0xFFFF0000 and IP 0xFFF0 (the reset vector at 4 GiB - 16), cs_ar 0x9F,
    CR0 0x30 (ET|NE), GDTR/IDTR limit 0xFFFF, RFLAGS 0x2, every GPR 0 (RDX too).
    """
    r = _real_mode(0xF000, 0xFFFF0000, 0xFFF0, 0xFFFF)
    r.vcpu_id = vcpu_id
    r.rflags = arch.RFLAGS_FIXED1
    return r


def bzimage_setup_size(setup_sects: int) -> int:
    """acrn-dm's setup size: (setup_sects + 1) * 512, with 0 sectors meaning 4 (boot protocol)."""
    if not 0 <= setup_sects <= 0xFF:
        raise ValueError(f"setup_sects: {setup_sects} is not a byte (boot header offset 0x1F1)")
    return ((setup_sects or 4) + 1) * 512


def bzimage_ramdisk_load_size(ramdisk_size: int) -> int:
    """RAMDISK_LOAD_SIZE: the ramdisk plus 8 KiB (bootargs and zero page), rounded up to 4 KiB."""
    return (ramdisk_size + 8 * KiB + 4 * KiB - 1) & ~(4 * KiB - 1)


def bzimage_gdt_gpa(lowmem: int, ramdisk_size: int = 0) -> int:
    """Where acrn-dm puts the boot GDT: below the ramdisk load area, 2 KiB down (lowmem - 10 KiB without)."""
    return lowmem - bzimage_ramdisk_load_size(ramdisk_size) - 2 * KiB


def bzimage_zero_page_gpa(lowmem: int) -> int:
    """The zero page (boot_params) is at lowmem - 4 KiB; RSI points at it."""
    return lowmem - 4 * KiB


def bzimage(lowmem: int = DEFAULT_LOWMEM, setup_sects: int = 4, ramdisk_size: int = 0) -> VcpuRegs:
    """acrn-dm's direct bzImage boot (``devicemodel/core/sw_load_bzimage.c: acrn_sw_load_bzimage``): 32-bit
    protected mode at the kernel's code32 entry.

    ``lowmem``: the guest's RAM below 4 GiB in bytes (2 MiB multiple, at most 2 GiB).
    ``setup_sects``: byte 0x1F1 of the bzImage (0 means 4); the entry is 16 MiB + (setup_sects+1)*512
    because acrn-dm copies the whole file, real-mode setup included, to 16 MiB.
    ``ramdisk_size``: bytes of initrd (0: none); it moves the GDT below the ramdisk.
    """
    _check_lowmem(lowmem)
    if ramdisk_size < 0:
        raise ValueError(f"ramdisk_size: {ramdisk_size} is negative")
    load = bzimage_ramdisk_load_size(ramdisk_size)
    if ramdisk_size and lowmem <= load + 2 * KiB + KERNEL_LOAD_OFF:
        raise ValueError(
            f"lowmem: {lowmem:#x} leaves no room above 16 MiB for a {ramdisk_size}-byte ramdisk "
            f"(needs more than {load + 2 * KiB + KERNEL_LOAD_OFF:#x})"
        )
    return VcpuRegs(
        cr0=arch.CR0_ET | arch.CR0_NE | arch.CR0_PE,
        cs_sel=0x10,
        cs_ar=PROTECTED_MODE_CODE_SEG_AR,
        cs_limit=0xFFFFFFFF,
        ds_sel=0x18,
        ss_sel=0x18,
        es_sel=0x18,
        rsi=bzimage_zero_page_gpa(lowmem),
        rip=KERNEL_LOAD_OFF + bzimage_setup_size(setup_sects),
        gdt=DescriptorPtr(base=bzimage_gdt_gpa(lowmem, ramdisk_size), limit=31),
    )


def ovmf() -> VcpuRegs:
    """acrn-dm's OVMF boot (``sw_load_ovmf.c: acrn_sw_load_ovmf``): the reset vector with GDTR/IDTR limit 0
    (the template has 0xFFFF).

    The image always ends at 4 GiB, so no parameter changes the registers.
    """
    return _real_mode(0xF000, 0xFFFF0000, 0xFFF0, 0)


def elf(entry: int = DEFAULT_ELF_ENTRY, multiboot: bool = False, lowmem: int = DEFAULT_LOWMEM) -> VcpuRegs:
    """acrn-dm's ELF32 loader (``sw_load_elf.c: acrn_sw_load_elf``), how acrn-unit-test images boot.

    ``entry``: the ELF's e_entry (32-bit).  ``multiboot``: the image has a multiboot header with
    flags exactly 0x2, so an info block sits at 0x20000 and EBX points to it (EAX holds the magic in
    either case).  ``lowmem``: places the 3-entry GDT at lowmem - 64 KiB.  cs_ar is acrn-dm's
    0xCF9B, whose reserved bits 11:8 the validator reports.
    """
    _check_lowmem(lowmem)
    if not 0 <= entry < 1 << 32:
        raise ValueError(f"entry: {entry:#x} is not a 32-bit address (only ELF32 is loaded)")
    return VcpuRegs(
        cr0=arch.CR0_ET | arch.CR0_NE | arch.CR0_PE,
        cs_sel=0x08,
        cs_ar=ELF_LOADER_CODE_SEG_AR,
        cs_limit=0xFFFFFFFF,
        ds_sel=0x10,
        ss_sel=0x10,
        es_sel=0x10,
        fs_sel=0x10,
        gs_sel=0x10,
        rip=entry,
        rax=MULTIBOOT_BOOTLOADER_MAGIC,
        rbx=MULTIBOOT_INFO_GPA if multiboot else 0,
        gdt=DescriptorPtr(base=lowmem - 64 * KiB, limit=23),
    )


def vsbl(lowmem: int = DEFAULT_LOWMEM) -> VcpuRegs:
    """acrn-dm's vSBL loader (``sw_load_vsbl.c: acrn_sw_load_vsbl``): real mode at 0xF000:0xFFF0 with CS
    base 0x03FF0000.

    ``lowmem`` places the config page (vsbl_para) at lowmem - 4 KiB; RSI points at it.
    """
    _check_lowmem(lowmem)
    r = _real_mode(0xF000, VSBL_CS_BASE, 0xFFF0, 0)
    r.rsi = lowmem - 4 * KiB
    return r


def long64(
    entry: int = 0x100000,
    cr3: int = 0x1000,
    rsp: int = 0,
    gdt_base: int = 0,
    gdt_limit: int = 0,
    cs_sel: int = 0x08,
    data_sel: int = 0x10,
) -> VcpuRegs:
    """A direct 64-bit long-mode entry (no acrn-dm loader does this; ACRN supports it: ``set_vcpu_regs``
    picks 64-bit mode from EFER.LMA and CS.L).

    CR0 PG|PE|NE|ET, CR4 PAE, EFER LME|LMA and cs_ar 0xA09B (L set, D/B clear) so that ACRN sets
    the IA-32e mode guest control.  ``cr3``: GPA of the PML4 the caller built (identity maps
    ``entry``).  ``rsp``: initial stack.  ``gdt_base``/``gdt_limit``: a GDT for later segment loads
    (entry itself does not read it).  ``cs_sel``/``data_sel``: selectors to record.
    """
    return VcpuRegs(
        cr0=arch.CR0_PG | arch.CR0_PE | arch.CR0_NE | arch.CR0_ET,
        cr4=arch.CR4_PAE,
        cr3=cr3,
        ia32_efer=arch.EFER_LME | arch.EFER_LMA,
        cs_sel=cs_sel,
        cs_ar=LONG_MODE_CODE_SEG_AR,
        cs_limit=0xFFFFFFFF,
        ds_sel=data_sel,
        ss_sel=data_sel,
        es_sel=data_sel,
        rip=entry,
        rsp=rsp,
        rflags=arch.RFLAGS_FIXED1,
        gdt=DescriptorPtr(base=gdt_base, limit=gdt_limit),
    )


#: Every preset by name; each callable works without arguments.
PRESETS: Final[dict[str, Callable[..., VcpuRegs]]] = {
    "reset": reset,
    "bzimage": bzimage,
    "ovmf": ovmf,
    "elf": elf,
    "vsbl": vsbl,
    "long64": long64,
}


def make(name: str, **params: object) -> VcpuRegs:
    """Call preset ``name`` with keyword ``params``; unknown names and parameters name themselves."""
    import inspect

    fn = PRESETS.get(name)
    if fn is None:
        raise ValueError(f"preset: {name!r} is not one of {', '.join(PRESETS)}")
    sig = inspect.signature(fn)
    for k in params:
        if k not in sig.parameters:
            known = ", ".join(sig.parameters) or "none"
            raise ValueError(f"preset {name}: unknown parameter {k!r} (parameters: {known})")
    return fn(**params)


def parse_params(name: str, items: list[str]) -> dict[str, object]:
    """Parse ``k=v`` strings for preset ``name``: integers in any Python base, booleans as true/false/1/0."""
    import inspect

    fn = PRESETS.get(name)
    if fn is None:
        raise ValueError(f"preset: {name!r} is not one of {', '.join(PRESETS)}")
    sig = inspect.signature(fn)
    out: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--param {item!r}: expected NAME=VALUE")
        p = sig.parameters.get(key)
        if p is None:
            known = ", ".join(sig.parameters) or "none"
            raise ValueError(f"preset {name}: unknown parameter {key!r} (parameters: {known})")
        if isinstance(p.default, bool):
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                out[key] = True
            elif low in ("0", "false", "no", "off"):
                out[key] = False
            else:
                raise ValueError(f"preset {name}: {key}: {text!r} is not a boolean")
        else:
            try:
                out[key] = int(text.strip().replace("_", ""), 0)
            except ValueError:
                raise ValueError(f"preset {name}: {key}: {text!r} is not an integer") from None
    return out
