"""What to boot and which of acrn-dm's loaders boots it (devicemodel/core/sw_load_common.c: acrn_sw_load).

:class:`ImageSpec` holds the images ``acrn run`` was given and picks the loader by acrn-dm's
priority; :func:`run_loader` runs that loader into any :class:`~acrn.dm.loaders.GuestMemory`.
Putting the result into a VM (RAM, devices, ACPI, SET_VCPU_REGS) is :mod:`acrn.dm.boot`.
"""

from __future__ import annotations

from dataclasses import dataclass

from acrn.dm.loaders import GuestMemory, LoaderError, LoadResult, MemoryLayout
from acrn.dm.loaders.bzimage import load_bzimage
from acrn.dm.loaders.elf import load_elf
from acrn.dm.loaders.ovmf import firmware_image, load_ovmf
from acrn.dm.loaders.vmlinux import load_vmlinux


@dataclass
class ImageSpec:
    """What to boot; exactly one of kernel / elf / ovmf / vmlinux."""

    kernel: bytes | None = None  # bzImage (-k)
    elf: bytes | None = None  # ELF32 multiboot (-E)
    ovmf: bytes | None = None  # firmware ending at 4 GiB (--ovmf)
    vmlinux: bytes | None = None  # ELF64 through the 64-bit boot protocol (--vmlinux)
    ramdisk: bytes | None = None
    bootargs: str | None = None
    cpus: int = 1

    @property
    def loader(self) -> str:
        """acrn-dm's priority (``acrn_sw_load``): OVMF > bzImage > ELF; vmlinux is pyacrn's own."""
        given = [n for n in ("ovmf", "kernel", "elf", "vmlinux") if getattr(self, n) is not None]
        if not given:
            raise LoaderError("nothing to boot: give a kernel, an ELF, a firmware image or a vmlinux")
        if len(given) > 1 and "vmlinux" in given:
            raise LoaderError("--vmlinux cannot be combined with another image")
        return {"ovmf": "ovmf", "kernel": "bzimage", "elf": "elf", "vmlinux": "vmlinux"}[given[0]]

    def layout(self, memsize: int) -> MemoryLayout:
        bios = len(self.ovmf) if self.loader == "ovmf" and self.ovmf is not None else 0
        return MemoryLayout.from_memsize(memsize, biosmem=bios)


def run_loader(mem: GuestMemory, layout: MemoryLayout, spec: ImageSpec) -> LoadResult:
    """Run the chosen loader into ``mem`` (any GuestMemory)."""
    loader = spec.loader
    if loader == "ovmf":
        assert spec.ovmf is not None
        return load_ovmf(mem, layout, firmware_image(ovmf=spec.ovmf))
    if loader == "bzimage":
        assert spec.kernel is not None
        return load_bzimage(mem, layout, spec.kernel, ramdisk=spec.ramdisk, bootargs=spec.bootargs)
    if loader == "elf":
        assert spec.elf is not None
        return load_elf(mem, layout, spec.elf)
    assert spec.vmlinux is not None
    return load_vmlinux(mem, layout, spec.vmlinux, ramdisk=spec.ramdisk, bootargs=spec.bootargs)
