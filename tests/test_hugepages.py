"""acrn.hugepages: acrn-dm's huge-page arithmetic, and the host pools read and written through
paths the tests choose (never the host's own settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from acrn import hugepages as hp

MiB, GiB = 1 << 20, 1 << 30
LAUNCH = ["-s", "0:0,hostbridge", "-s", "1:0,lpc", "-l", "com1,stdio", "--cpu_affinity", "1", "vm1"]


@pytest.mark.parametrize(
    ("text", "size"),
    [("256M", 256 * MiB), ("256m", 256 * MiB), ("1g", GiB), ("131072K", 128 * MiB), ("0x100M", 256 * MiB),
     ("0400M", 256 * MiB), (" 4G", 4 * GiB)],
)  # fmt: skip
def test_parse_memsize_accepts_acrn_dm_units(text: str, size: int) -> None:
    assert hp.parse_memsize(text) == size


@pytest.mark.parametrize(
    "text", ["256", "268435456", "268435456b", "0x10000000", "100M", "256k", "M", "", "1t"]
)
def test_parse_memsize_rejects_what_acrn_dm_rejects(text: str) -> None:
    # The no-unit and "b" cases fall through into vm_parse_memsize's error branch; < 128 MiB too.
    with pytest.raises(ValueError, match=f"invalid memsize '{text}'"):
        hp.parse_memsize(text)


def test_256m_guest_needs_136_pages_lowmem_plus_framebuffer() -> None:
    mem = hp.memory_from_argv(["-m", "256M", *LAUNCH])
    assert mem == hp.DmMemory(lowmem=256 * MiB, highmem=0, bios=0, framebuffer=16 * MiB)
    assert mem.pages_2m == 128 + 8 == 136


def test_default_memsize_is_256m() -> None:
    assert hp.pages_needed(LAUNCH) == 136


def test_memory_above_2g_is_highmem() -> None:
    mem = hp.memory_from_argv(["--memsize", "4G", *LAUNCH])
    assert (mem.lowmem, mem.highmem) == (2 * GiB, 2 * GiB)
    assert mem.pages_2m == 2048 + 8
    # With 1 GiB pages: two for lowmem, two for highmem; the framebuffer stays on 2 MiB pages.
    assert mem.split() == (4, 8)


def test_ovmf_image_rounds_up_to_a_2m_bios_region() -> None:
    sizes = {"OVMF.fd": 2 * MiB, "code.fd": 2 * MiB - 128 * 1024, "vars.fd": 128 * 1024 + 1}
    one = hp.memory_from_argv(["-m256M", "--ovmf", "w,OVMF.fd", *LAUNCH], file_size=sizes.__getitem__)
    assert one.bios == 2 * MiB and one.pages_2m == 137
    split = hp.memory_from_argv(["--ovmf=code=code.fd,vars=vars.fd", *LAUNCH], file_size=sizes.__getitem__)
    assert split.bios == 4 * MiB


def test_missing_ovmf_file_is_named() -> None:
    with pytest.raises(ValueError, match=r"nope\.fd"):
        hp.memory_from_argv(["--ovmf", "/nope/nope.fd", *LAUNCH])


def test_last_memsize_wins_and_option_values_are_not_options() -> None:
    # "-m 1G" inside -B's value is a kernel argument, not acrn-dm's option.
    argv = ["-m", "1G", "-B", "-m 3G", "--mems=512M", "vm1", "-k", "-m"]
    assert hp.memory_from_argv(argv).lowmem == 512 * MiB


def test_unaligned_memsize_is_refused_like_acrn_dm() -> None:
    with pytest.raises(ValueError, match="not a multiple of 2 MiB"):
        hp.memory_from_argv(["-m", "129M", "vm1"])


def test_ambiguous_long_option_is_an_error() -> None:
    with pytest.raises(ValueError, match="ambiguous"):
        hp.memory_from_argv(["--v", "vm1"])  # version, vsbl, virtio_poll, ...


def _fake_pool(root: Path, total: int, free: int, resv: int = 0, size_kb: int = 2048) -> Path:
    d = root / f"hugepages-{size_kb}kB"
    d.mkdir(parents=True)
    for name, value in (("nr_hugepages", total), ("free_hugepages", free), ("resv_hugepages", resv)):
        (d / name).write_text(f"{value}\n")
    return d


def test_read_pool_and_target_total(tmp_path: Path) -> None:
    _fake_pool(tmp_path, total=200, free=150, resv=20)
    pool = hp.read_pool(root=tmp_path)
    assert pool == hp.Pool(hp.HUGE_2M, total=200, free=150, reserved=20)
    assert pool.available == 130
    assert hp.target_total(pool, 136) == 206
    assert hp.target_total(pool, 100) == 200


def test_read_pool_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(hp.HugePageError, match="hugepages-1048576kB/nr_hugepages"):
        hp.read_pool(hp.HUGE_1G, root=tmp_path)


def test_reserve_command_is_the_proc_knob_for_2m_pages() -> None:
    assert hp.reserve_command(136) == "echo 136 > /proc/sys/vm/nr_hugepages"
    assert hp.reserve_command(4, hp.HUGE_1G) == (
        "echo 4 > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"
    )


def test_reserve_writes_the_total_and_reads_back(tmp_path: Path) -> None:
    knob = tmp_path / "nr_hugepages"
    knob.write_text("0\n")
    assert hp.reserve(136, knob) == 136
    assert knob.read_text() == "136\n"


def test_reserve_reports_a_short_grant(tmp_path: Path) -> None:
    class ShortKnob(type(tmp_path)):  # type: ignore[misc]
        def read_text(self, *args: object, **kwargs: object) -> str:
            return "100\n"

    knob = ShortKnob(tmp_path / "nr_hugepages")
    with pytest.raises(hp.HugePageError, match="asked for 136 huge pages, the kernel granted 100"):
        hp.reserve(136, knob)


def test_reserve_names_a_knob_it_cannot_write(tmp_path: Path) -> None:
    missing_dir = tmp_path / "absent" / "nr_hugepages"
    with pytest.raises(hp.HugePageError, match="No such file"):
        hp.reserve(1, missing_dir)


def test_the_hosts_pool_is_readable_where_the_kernel_has_one() -> None:
    if not hp.pool_dir().is_dir():
        pytest.skip("this kernel has no 2 MiB hugetlb pool")
    pool = hp.read_pool()
    assert pool.page_size == hp.HUGE_2M and 0 <= pool.free <= pool.total


def test_shortfall_says_what_to_reserve() -> None:
    empty = hp.Pool(hp.HUGE_2M, total=0, free=0)
    assert hp.shortfall(["-m", "256M", *LAUNCH], empty) == (
        "acrn-dm needs 136 free 2 MiB huge pages for this guest, 0 are available (pool 0); "
        "as root: echo 136 > /proc/sys/vm/nr_hugepages"
    )
    busy = hp.Pool(hp.HUGE_2M, total=300, free=100)
    assert "echo 336 > /proc/sys/vm/nr_hugepages" in (hp.shortfall(LAUNCH, busy) or "")
    assert hp.shortfall(LAUNCH, hp.Pool(hp.HUGE_2M, total=136, free=136)) is None
