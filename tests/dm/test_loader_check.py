"""acrn.dm.loaders.check: an image that is not what its option claims is refused, with the fix."""

from __future__ import annotations

import struct

import pytest

from acrn.dm.loaders import LoaderError
from acrn.dm.loaders.check import check_bzimage, check_elf, check_firmware, check_image, describe
from acrn.dm.loaders.image import ImageSpec

MiB = 1 << 20


def _bzimage(
    *, syssize: int = 0x100, init_size: int = 0x1000000, version: int = 0x020F, body: int = 0
) -> bytes:
    setup = bytearray(5 * 512)
    setup[0x1F1] = 4
    struct.pack_into("<I", setup, 0x1F4, syssize)
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + bytes(body if body else syssize * 16)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "an empty file"),
        (b"\x7fELF\x02" + bytes(60), "an ELF64 file"),
        (b"\x7fELF\x01" + bytes(60), "an ELF32 file"),
        (b"\x1f\x8b\x08" + bytes(20), "gzip-compressed data"),
        (b"070701" + bytes(100), "a cpio archive"),
        (b"hello world\n", "a text file (starting 'hello world')"),
        (bytes(range(256)) * 4, "1024 bytes of data starting 00 01 02"),
    ],
)
def test_describe_says_what_a_file_looks_like(data: bytes, words: str) -> None:
    assert describe(data).startswith(words)


def test_a_complete_bzimage_that_fits_passes() -> None:
    assert check_bzimage(_bzimage(), 256 * MiB, 0) == []


def test_bzimage_without_the_boot_header_is_refused_with_what_was_found() -> None:
    with pytest.raises(LoaderError, match=r"not a bzImage: a text file .*'HdrS' at 0x202"):
        check_bzimage(b"x" * 0x1000, 256 * MiB, 0)


def test_truncated_bzimage_names_both_sizes() -> None:
    img = _bzimage(syssize=0x1000, body=0x800)
    with pytest.raises(
        LoaderError, match=r"truncated bzImage: its header says 68096 bytes .* the file has 4608"
    ):
        check_bzimage(img, 256 * MiB, 0)


def test_init_size_beyond_memory_gives_the_memory_needed() -> None:
    img = _bzimage(init_size=0x4000000)  # 64 MiB from 16 MiB: needs 80 MiB and a little
    with pytest.raises(LoaderError, match=r"needs -m 82M or more"):
        check_bzimage(img, 64 * MiB, 0)
    assert check_bzimage(img, 82 * MiB, 0) == []
    with pytest.raises(LoaderError, match=r"and the ramdisk 16777216 bytes"):
        check_bzimage(img, 82 * MiB, 16 * MiB)


def test_old_boot_protocol_is_refused() -> None:
    with pytest.raises(LoaderError, match=r"older than 2\.02"):
        check_bzimage(_bzimage(version=0x0201), 256 * MiB, 0)


def test_elf_classes_point_at_the_right_option() -> None:
    elf64 = b"\x7fELF\x02\x01\x01" + bytes(0x100)
    elf32 = b"\x7fELF\x01\x01\x01" + bytes(0x100)
    with pytest.raises(LoaderError, match="use --vmlinux"):
        check_bzimage(elf64, 256 * MiB, 0)
    with pytest.raises(LoaderError, match=r"use -E"):
        check_bzimage(elf32, 256 * MiB, 0)
    with pytest.raises(LoaderError, match="for a Linux vmlinux use --vmlinux"):
        check_elf(elf64, 1, "-E")
    with pytest.raises(LoaderError, match="for an ELF32 multiboot image use -E"):
        check_elf(elf32, 2, "--vmlinux")
    with pytest.raises(LoaderError, match=r"this is a bzImage, not an ELF64 vmlinux \(--vmlinux\): use -k"):
        check_elf(_bzimage(), 2, "--vmlinux")


def test_elf_with_segments_past_the_end_is_truncated() -> None:
    out = bytearray(0x100)
    out[:16] = b"\x7fELF\x01\x01\x01" + bytes(9)
    struct.pack_into("<HHIIIIIHHHHHH", out, 16, 2, 3, 1, 0x400000, 0x34, 0, 0, 0x34, 32, 1, 40, 0, 0)
    struct.pack_into("<8I", out, 0x34, 1, 0x100, 0x400000, 0x400000, 0x1000, 0x1000, 7, 0x1000)
    with pytest.raises(LoaderError, match="truncated ELF file: segment 0 ends at 0x1100"):
        check_elf(bytes(out), 1, "-E")


@pytest.mark.parametrize(
    "vector", [b"\xe9\x00\x00", b"\x90\x90\xe9\x00\x00", b"\x0f\x09\xe9\x00\x00", b"\xea\x5b\xe0\x00\xf0"]
)
def test_firmware_with_a_jump_at_the_reset_vector_passes(vector: bytes) -> None:
    check_firmware(bytes(0x10000 - 16) + vector.ljust(16, b"\0"))


def test_text_as_firmware_is_refused() -> None:
    with pytest.raises(
        LoaderError, match=r"not a firmware image: a text file .* no jump; expected e.g. OVMF.fd"
    ):
        check_firmware(b"not firmware at all\n" * 10)


def test_check_image_dispatches_on_the_loader() -> None:
    assert check_image(ImageSpec(kernel=_bzimage()), 256 * MiB) == []
    with pytest.raises(LoaderError):
        check_image(ImageSpec(ovmf=b"text\n" * 10), 256 * MiB)
