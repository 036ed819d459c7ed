"""Is the image what the option claims?  Checked before a VM exists, with the fix in the message.

acrn-dm's loaders trust the file: a text file passed as ``-k`` is copied to 16 MiB and entered,
and the guest triple-faults or stays silent until a timeout.  :func:`check_image` recognises what
the file really is and refuses it with what was found, what was expected and the option to use
instead; it returns warnings for what may still boot.  The loaders themselves stay as faithful
(and as permissive) as acrn-dm's.

Rules (Documentation/arch/x86/boot.rst for the bzImage header):

* ``-k``: the boot sector signature 0xAA55 at 0x1FE and "HdrS" at 0x202; the file holds the
  setup (``(setup_sects or 4) + 1`` sectors) and ``syssize`` 16-byte paragraphs of protected-mode
  code; with protocol 2.10 or later the kernel needs ``init_size`` bytes from where it runs
  (16 MiB here), which must end below the ramdisk, command line and zero page at the top of
  lowmem.
* ``--vmlinux``: an ELF64 executable; ``-E``: an ELF32 executable (acrn-dm has no 64-bit ELF
  loader).
* ``--ovmf``: the last 16 bytes are the reset vector; real firmware starts there with a jump
  (``jmp rel``, ``ljmp``), maybe after a ``nop``, ``cli``, ``cld`` or ``wbinvd``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from acrn.dm.loaders import KiB, LoaderError, MiB
from acrn.dm.loaders import zeropage as zp

if TYPE_CHECKING:
    from acrn.dm.loaders.image import ImageSpec

KERNEL_LOAD_OFF: Final = 16 * MiB
#: Room acrn-dm's bzImage loader takes below the ramdisk: the GDT (2 KiB); above: bootargs and
#: zero page (8 KiB, inside RAMDISK_LOAD_SIZE).
_BELOW_RAMDISK: Final = 2 * KiB
#: Bytes a firmware may execute before its first jump at the reset vector.
_RESET_PREFIXES: Final = (b"\x90", b"\xfa", b"\xfc", b"\x0f\x09", b"\x66")
_JUMPS: Final = (0xE9, 0xEB, 0xEA)


def describe(data: bytes) -> str:
    """What a file looks like, in a few words (for messages)."""
    if not data:
        return "an empty file"
    if data[:4] == b"\x7fELF":
        cls = {1: "ELF32", 2: "ELF64"}.get(data[4] if len(data) > 4 else 0, "ELF")
        return f"an {cls} file"
    if len(data) > 0x206 and data[0x202:0x206] == b"HdrS":
        return "a bzImage (Linux boot-protocol header)"
    if data[:2] == b"\x1f\x8b":
        return "gzip-compressed data"
    if data[:6] in (b"070701", b"070702"):
        return "a cpio archive (an initramfs?)"
    if data[:2] == b"MZ" and b"PE\x00\x00" in data[:1024]:
        return "a PE/EFI executable"
    head = data[:512]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    if printable >= len(head) * 0.95:
        first = head.split(b"\n", 1)[0][:40].decode("ascii", errors="replace")
        return f"a text file (starting {first!r})"
    return f"{len(data)} bytes of data starting {data[:8].hex(' ')}"


def _round_mib(size: int, mib: int = 2) -> int:
    return -(-size // (mib * MiB)) * mib


def check_bzimage(kernel: bytes, memsize_lowmem: int, ramdisk_size: int) -> list[str]:
    """Refuse what is not a complete bzImage that fits; return warnings."""
    what = describe(kernel)
    if kernel[:4] == b"\x7fELF":
        fix = "use --vmlinux" if len(kernel) > 4 and kernel[4] == 2 else "use -E (ELF32 multiboot)"
        raise LoaderError(f"this is {what} (an uncompressed kernel?), not a bzImage: {fix}")
    if len(kernel) < zp.ACRN_HDR_END:
        raise LoaderError(f"not a bzImage: {what} of {len(kernel)} bytes (a bzImage is megabytes)")
    hdr = zp.parse_setup_header(kernel)
    if hdr.boot_flag != zp.BOOT_FLAG_MAGIC or hdr.header != zp.HEADER_MAGIC:
        raise LoaderError(
            f"not a bzImage: {what}; expected the Linux boot-protocol header (0xAA55 at 0x1fe, "
            "'HdrS' at 0x202), e.g. arch/x86/boot/bzImage or /boot/vmlinuz-*"
        )
    warnings: list[str] = []
    syssize = struct.unpack_from("<I", kernel, zp.SYSSIZE)[0]
    expected = hdr.setup_size + syssize * 16
    if syssize and len(kernel) < expected:
        raise LoaderError(
            f"truncated bzImage: its header says {expected} bytes (setup {hdr.setup_size} + "
            f"kernel {syssize * 16}), the file has {len(kernel)}; copy it again"
        )
    if hdr.version < 0x0202:
        raise LoaderError(
            f"boot protocol {hdr.version >> 8}.{hdr.version & 0xFF:02d} is older than 2.02: acrn-dm's "
            "32-bit entry needs a newer kernel"
        )
    if hdr.version >= 0x020A and hdr.init_size:
        need_top = KERNEL_LOAD_OFF + max(hdr.init_size, len(kernel))
        lowmem_needed = need_top + _BELOW_RAMDISK + ((ramdisk_size + 8 * KiB + 4 * KiB - 1) & ~(4 * KiB - 1))
        if lowmem_needed > memsize_lowmem:
            raise LoaderError(
                f"the kernel needs {hdr.init_size:#x} bytes (init_size) from 16 MiB"
                + (f" and the ramdisk {ramdisk_size} bytes below the top" if ramdisk_size else "")
                + f": {memsize_lowmem >> 20} MiB of RAM is too little; "
                f"needs -m {_round_mib(lowmem_needed)}M or more"
            )
    return warnings


def check_elf(image: bytes, want_class: int, option: str) -> None:
    """An ELF executable of the class the option loads (1: ELF32 for -E, 2: ELF64 for --vmlinux)."""
    what = describe(image)
    if image[:4] != b"\x7fELF":
        if "bzImage" in what:
            wanted = "an ELF64 vmlinux" if want_class == 2 else "an ELF32 image"
            raise LoaderError(f"this is a bzImage, not {wanted} ({option}): use -k")
        raise LoaderError(f"not an ELF file: {what}")
    cls = image[4] if len(image) > 4 else 0
    if cls != want_class:
        if want_class == 1:
            raise LoaderError(
                f"{what}: {option} loads ELF32 only (acrn-dm has no 64-bit ELF loader); "
                "for a Linux vmlinux use --vmlinux"
            )
        raise LoaderError(f"{what}: {option} loads an ELF64 vmlinux; for an ELF32 multiboot image use -E")
    header_len = 0x34 if want_class == 1 else 0x40
    if len(image) < header_len:
        raise LoaderError(f"truncated ELF file: {len(image)} bytes, the ELF header alone is {header_len}")
    if want_class == 1:
        phoff = struct.unpack_from("<I", image, 0x1C)[0]
        phentsize, phnum = struct.unpack_from("<HH", image, 0x2A)
    else:
        phoff = struct.unpack_from("<Q", image, 0x20)[0]
        phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    if phnum == 0:
        raise LoaderError(f"{what} without program headers: nothing to load (is it an object file?)")
    if phoff + phnum * phentsize > len(image):
        raise LoaderError(
            f"truncated ELF file: its program headers end at {phoff + phnum * phentsize:#x}, "
            f"the file has {len(image):#x} bytes; copy it again"
        )
    # Every PT_LOAD's file bytes must be in the file.
    fmt = "<IIIIII" if want_class == 1 else "<IIQQQQ"
    for i in range(phnum):
        off = phoff + i * phentsize
        if want_class == 1:
            p_type, p_offset, _v, _p, p_filesz, _m = struct.unpack_from(fmt, image, off)
        else:
            p_type, _fl, p_offset, _v, _p, p_filesz = struct.unpack_from(fmt, image, off)
        if p_type == 1 and p_offset + p_filesz > len(image):
            raise LoaderError(
                f"truncated ELF file: segment {i} ends at {p_offset + p_filesz:#x}, the file has "
                f"{len(image):#x} bytes; copy it again"
            )


def check_firmware(image: bytes) -> None:
    """A firmware image whose last 16 bytes (the reset vector) start with a jump."""
    if len(image) < 16:
        raise LoaderError(f"not a firmware image: {describe(image)} of {len(image)} bytes")
    vector = image[-16:]
    i = 0
    while i < 8:
        for prefix in _RESET_PREFIXES:
            if vector[i : i + len(prefix)] == prefix:
                i += len(prefix)
                break
        else:
            break
    if vector[i] not in _JUMPS:
        raise LoaderError(
            f"not a firmware image: {describe(image)}; its last 16 bytes (the reset vector at "
            f"0xfffffff0) are {vector.hex(' ')}, with no jump; expected e.g. OVMF.fd"
        )


def check_image(spec: ImageSpec, memsize: int) -> list[str]:
    """Refuse an image that is not what its option says (LoaderError); warnings otherwise."""
    layout = spec.layout(memsize)
    loader = spec.loader
    if loader == "bzimage":
        assert spec.kernel is not None
        rd = len(spec.ramdisk) if spec.ramdisk is not None else 0
        return check_bzimage(spec.kernel, layout.lowmem, rd)
    if loader == "vmlinux":
        assert spec.vmlinux is not None
        check_elf(spec.vmlinux, 2, "--vmlinux")
    elif loader == "elf":
        assert spec.elf is not None
        check_elf(spec.elf, 1, "-E")
    elif loader == "ovmf":
        assert spec.ovmf is not None
        check_firmware(spec.ovmf)
    return []
