"""acrn-dm's firmware loader (``--ovmf``, devicemodel/core/sw_load_ovmf.c: ``acrn_sw_load_ovmf``).

The image ends at 4 GiB, so its reset vector is at 4 GiB - 16 and the BSP starts there in real
mode: cr0 0x30, CS 0xF000 with base 0xFFFF0000, limit 0xFFFF, AR 0x9F, IP 0xFFF0, and GDTR/IDTR
limit 0 (unlike the hypervisor's reset template, which has 0xFFFF).  The image is either one file
of at most 2 MiB or a CODE part (at most 2 MiB - 128 KiB) plus a VARS part (at most 128 KiB),
VARS placed first, i.e. below CODE.  The firmware finds the memory map at 0xEF000: "820\\0", a
u32 count, then acrn-dm's packed e820 entries.  The RAM that holds the image (the "BIOS
region", the image size rounded up to 2 MiB, ending at 4 GiB) is part of the layout:
:meth:`MemoryLayout.from_memsize` with ``biosmem=firmware_size(...)``.
"""

from __future__ import annotations

from typing import Final

from acrn.dm.loaders import GiB, GuestMemory, KiB, LoaderError, LoadResult, MemoryLayout, MiB
from acrn.dm.loaders.e820 import OVMF_E820_GPA, acrn_e820, ovmf_e820_blob
from acrn.regs import presets

OVMF_TOP: Final = 4 * GiB
OVMF_MAX_SIZE: Final = 2 * MiB
OVMF_VARS_MAX_SIZE: Final = 128 * KiB
OVMF_CODE_MAX_SIZE: Final = OVMF_MAX_SIZE - OVMF_VARS_MAX_SIZE
RESET_VECTOR: Final = OVMF_TOP - 16


def firmware_image(ovmf: bytes | None = None, code: bytes | None = None, vars_: bytes | None = None) -> bytes:
    """The bytes that end at 4 GiB: one file, or VARS followed by CODE; sizes checked as acrn-dm."""
    if ovmf is not None:
        if code is not None or vars_ is not None:
            raise LoaderError("give either one OVMF image or CODE and VARS, not both")
        if not ovmf or len(ovmf) > OVMF_MAX_SIZE:
            raise LoaderError(f"OVMF image of {len(ovmf)} bytes: must be 1 byte to 2 MiB")
        return ovmf
    if code is None or vars_ is None:
        raise LoaderError("split firmware needs both CODE and VARS")
    if not code or len(code) > OVMF_CODE_MAX_SIZE:
        raise LoaderError(f"OVMF CODE of {len(code)} bytes: must be 1 byte to 2 MiB - 128 KiB")
    if not vars_ or len(vars_) > OVMF_VARS_MAX_SIZE:
        raise LoaderError(f"OVMF VARS of {len(vars_)} bytes: must be 1 byte to 128 KiB")
    return vars_ + code


def load_ovmf(mem: GuestMemory, layout: MemoryLayout, image: bytes) -> LoadResult:
    """Copy a firmware image (from :func:`firmware_image`) to end at 4 GiB; the reset-vector BSP state."""
    if not image or len(image) > OVMF_MAX_SIZE:
        raise LoaderError(f"firmware image of {len(image)} bytes: must be 1 byte to 2 MiB")
    if layout.biosmem < len(image):
        raise LoaderError(
            f"the BIOS region ({layout.biosmem:#x} bytes below 4 GiB) cannot hold {len(image)} bytes"
        )
    base = OVMF_TOP - len(image)
    mem.write(base, image)
    e820 = acrn_e820(layout.lowmem, layout.highmem)
    mem.write(OVMF_E820_GPA, ovmf_e820_blob(e820))
    result = LoadResult("ovmf", presets.ovmf())
    result.placements.update(firmware=base, e820=OVMF_E820_GPA, entry=RESET_VECTOR)
    result.note(f"firmware {len(image)} bytes at {base:#x}, reset vector {RESET_VECTOR:#x}")
    result.note(f"e820 ({len(e820)} entries) at {OVMF_E820_GPA:#x}; BSP 0xF000:0xFFF0, GDTR/IDTR limit 0")
    return result
