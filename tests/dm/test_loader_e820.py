"""acrn-dm's e820 table (``sw_load_common.c: acrn_create_e820_table``) and acrn-dm's memory
layout (``devicemodel/core/main.c``)."""

from __future__ import annotations

import pytest

from acrn.dm.loaders import GiB, LoaderError, MemoryLayout, MiB
from acrn.dm.loaders.e820 import (
    E820_TYPE_RAM as RAM,
)
from acrn.dm.loaders.e820 import (
    E820_TYPE_RESERVED as RSV,
)
from acrn.dm.loaders.e820 import (
    E820Entry,
    acrn_e820,
    ovmf_e820_blob,
    pack_e820,
    unpack_e820,
)


def test_e820_without_highmem_has_three_entries_and_a_legacy_hole() -> None:
    assert acrn_e820(256 * MiB) == [
        E820Entry(0, 0xA0000, RAM),
        E820Entry(0x100000, 255 * MiB, RAM),
        E820Entry(0xE0000000, 0x20000000, RSV),
    ]


def test_e820_highmem_is_ram_at_4_gib() -> None:
    assert acrn_e820(2 * GiB, 1 * GiB)[-1] == E820Entry(4 * GiB, 1 * GiB, RAM)


def test_e820_lowmem_part_1_stops_at_vssram() -> None:
    e = acrn_e820(2 * GiB, vssram=(0x40000000, 0x800000))
    assert e[1] == E820Entry(0x100000, 0x40000000 - 0x100000, RAM)
    assert e[2] == E820Entry(0x40000000, 0x800000, RSV)


def test_e820_lowmem_part_2_after_gpu_region_is_ram() -> None:
    e = acrn_e820(2 * GiB, gpu_rsvmem=(0x7C000000, 0x2000000))
    assert e[1] == E820Entry(0x100000, 0x7C000000 - 0x100000, RAM)
    assert e[2] == E820Entry(0x7C000000, 0x2000000, RSV)
    assert e[3] == E820Entry(0x7E000000, 0x2000000, RAM)


def test_e820_lowmem_below_gpu_region_has_no_part_2() -> None:
    e = acrn_e820(256 * MiB, gpu_rsvmem=(0x7C000000, 0x2000000))
    assert [x.type for x in e] == [RAM, RAM, RSV, RSV]


def test_e820_pack_is_20_byte_entries_round_trip() -> None:
    e = acrn_e820(256 * MiB, 64 * MiB)
    blob = pack_e820(e)
    assert len(blob) == 20 * len(e)
    assert unpack_e820(blob, len(e)) == e


def test_ovmf_e820_blob_has_signature_and_count() -> None:
    e = acrn_e820(128 * MiB)
    blob = ovmf_e820_blob(e)
    assert blob[:4] == b"820\0" and int.from_bytes(blob[4:8], "little") == 3 and len(blob) == 8 + 60


def test_layout_lowmem_capped_at_2_gib_rest_at_4_gib() -> None:
    lay = MemoryLayout.from_memsize(3 * GiB)
    assert (lay.lowmem, lay.highmem) == (2 * GiB, 1 * GiB)
    assert lay.regions() == [(0, 2 * GiB), (4 * GiB, 1 * GiB)]


def test_layout_bios_region_rounded_to_2_mib_ends_at_4_gib() -> None:
    lay = MemoryLayout.from_memsize(256 * MiB, biosmem=1 * MiB + 1)
    assert lay.regions() == [(0, 256 * MiB), (4 * GiB - 2 * MiB, 2 * MiB)]


def test_layout_rejects_sizes_that_are_not_2_mib_multiples() -> None:
    with pytest.raises(LoaderError):
        MemoryLayout.from_memsize(3 * MiB)


def test_no_zero_length_entry_is_kept_not_even_the_last_one() -> None:
    """acrn-dm's removal loop never looks at its last slot, so without highmem it reports a
    zero-length reserved entry at 4 GiB; pyacrn follows the intent (every zero-length entry removed),
    as docs/differences.md records."""
    for lowmem, highmem in ((16 * MiB, 0), (2 * GiB, 0), (2 * GiB, 2 * MiB)):
        table = acrn_e820(lowmem, highmem)
        assert all(e.length for e in table)
        assert (table[-1].base == 4 * GiB) == (highmem > 0)
    assert len(acrn_e820(2 * GiB)) == 3 and acrn_e820(2 * GiB)[1] == E820Entry(
        1 * MiB, 2 * GiB - 1 * MiB, RAM
    )
