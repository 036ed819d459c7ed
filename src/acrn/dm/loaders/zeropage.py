"""Linux x86 boot protocol: the setup header and the zero page (``boot_params``).

Offsets are those of Documentation/arch/x86/boot.rst; the header sits
at the same offset in the bzImage file and in the 4 KiB zero page.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

ZERO_PAGE_SIZE: Final = 4096

# boot_params fields outside the setup header.
ACPI_RSDP_ADDR: Final = 0x070
EXT_RAMDISK_IMAGE: Final = 0x0C0
EXT_RAMDISK_SIZE: Final = 0x0C4
EXT_CMD_LINE_PTR: Final = 0x0C8
E820_ENTRIES: Final = 0x1E8
SENTINEL: Final = 0x1EF
E820_TABLE: Final = 0x2D0

# The setup header.
SETUP_SECTS: Final = 0x1F1
SYSSIZE: Final = 0x1F4
BOOT_FLAG: Final = 0x1FE
JUMP: Final = 0x200
HEADER: Final = 0x202
VERSION: Final = 0x206
TYPE_OF_LOADER: Final = 0x210
LOADFLAGS: Final = 0x211
CODE32_START: Final = 0x214
RAMDISK_IMAGE: Final = 0x218
RAMDISK_SIZE: Final = 0x21C
HEAP_END_PTR: Final = 0x224
CMD_LINE_PTR: Final = 0x228
INITRD_ADDR_MAX: Final = 0x22C
KERNEL_ALIGNMENT: Final = 0x230
RELOCATABLE_KERNEL: Final = 0x234
XLOADFLAGS: Final = 0x236
CMDLINE_SIZE: Final = 0x238
PAYLOAD_OFFSET: Final = 0x248
PAYLOAD_LENGTH: Final = 0x24C
SETUP_DATA: Final = 0x250
PREF_ADDRESS: Final = 0x258
INIT_SIZE: Final = 0x260

BOOT_FLAG_MAGIC: Final = 0xAA55
HEADER_MAGIC: Final = 0x53726448  # "HdrS"
#: acrn-dm's ``struct _zeropage.hdr``: the bytes [0x1F1, 0x268) it copies from the image.
ACRN_HDR_START: Final = 0x1F1
ACRN_HDR_END: Final = 0x268

LOADER_TYPE_UNDEFINED: Final = 0xFF
LOADED_HIGH: Final = 0x01
KASLR_FLAG: Final = 0x02
QUIET_FLAG: Final = 0x20
KEEP_SEGMENTS: Final = 0x40
CAN_USE_HEAP: Final = 0x80
XLF_KERNEL_64: Final = 0x01


@dataclass(frozen=True)
class SetupHeader:
    """The fields of a bzImage's setup header that loaders and ``-v`` care about."""

    setup_sects: int
    boot_flag: int
    header: int
    version: int
    loadflags: int
    code32_start: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable_kernel: int
    xloadflags: int
    cmdline_size: int
    pref_address: int
    init_size: int

    @property
    def valid(self) -> bool:
        """Whether the image carries the "HdrS" signature and the 0xAA55 boot flag."""
        return self.header == HEADER_MAGIC and self.boot_flag == BOOT_FLAG_MAGIC

    @property
    def setup_size(self) -> int:
        """(setup_sects + 1) * 512 with 0 meaning 4 (boot protocol)."""
        return ((self.setup_sects or 4) + 1) * 512


def _u8(b: bytes, off: int) -> int:
    return b[off] if off < len(b) else 0


def _u16(b: bytes, off: int) -> int:
    return struct.unpack_from("<H", b, off)[0] if off + 2 <= len(b) else 0


def _u32(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0] if off + 4 <= len(b) else 0


def _u64(b: bytes, off: int) -> int:
    return struct.unpack_from("<Q", b, off)[0] if off + 8 <= len(b) else 0


def parse_setup_header(image: bytes) -> SetupHeader:
    """Read the header fields from a bzImage (missing bytes read as 0; nothing is rejected here)."""
    return SetupHeader(
        setup_sects=_u8(image, SETUP_SECTS),
        boot_flag=_u16(image, BOOT_FLAG),
        header=_u32(image, HEADER),
        version=_u16(image, VERSION),
        loadflags=_u8(image, LOADFLAGS),
        code32_start=_u32(image, CODE32_START),
        initrd_addr_max=_u32(image, INITRD_ADDR_MAX),
        kernel_alignment=_u32(image, KERNEL_ALIGNMENT),
        relocatable_kernel=_u8(image, RELOCATABLE_KERNEL),
        xloadflags=_u16(image, XLOADFLAGS),
        cmdline_size=_u32(image, CMDLINE_SIZE),
        pref_address=_u64(image, PREF_ADDRESS),
        init_size=_u32(image, INIT_SIZE),
    )


def put_u8(page: bytearray, off: int, value: int) -> None:
    page[off] = value & 0xFF


def put_u16(page: bytearray, off: int, value: int) -> None:
    struct.pack_into("<H", page, off, value & 0xFFFF)


def put_u32(page: bytearray, off: int, value: int) -> None:
    struct.pack_into("<I", page, off, value & 0xFFFFFFFF)


def get_u32(page: bytes, off: int) -> int:
    return _u32(page, off)
