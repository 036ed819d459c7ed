"""Huge pages for ACRN's acrn-dm: how many its command line needs, what the host has, how to reserve.

acrn-dm v3.3 backs all guest memory with hugetlb memfds (``core/hugetlb.c``), so a host must have
enough free huge pages before it starts (docs/acrn-dm.md section 5).  This module is pure apart
from the two functions that read or write the host's pools (:func:`read_pool`, :func:`reserve`),
and both take the sysfs/procfs paths as arguments so that tests never touch the host's settings.

The rules, all from acrn-dm's source:

* ``-m``/``--memsize`` (``core/vmmapi.c: vm_parse_memsize``): a C ``strtoul`` number (base 0:
  ``0x`` hex, leading ``0`` octal) followed by exactly one unit ``k``, ``m`` or ``g`` (any case);
  a bare number or a ``b`` unit is rejected, and so is anything below 128 MiB.  Default 256 MiB.
* ``core/vmmapi.c: vm_setup_memory``: lowmem = min(memsize, 2 GiB), highmem = the rest, BIOS =
  the OVMF image size (``--ovmf``; 0 without) rounded up to 2 MiB, framebuffer = 16 MiB always.
* ``core/hugetlb.c: hugetlb_setup_memory``: every region must be a multiple of 2 MiB; the 2 MiB
  pool serves all of it unless 1 GiB pages are in play (see :class:`DmMemory`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

KiB: Final = 1 << 10
MiB: Final = 1 << 20
GiB: Final = 1 << 30
HUGE_2M: Final = 2 * MiB
HUGE_1G: Final = 1 * GiB

SYSFS_HUGEPAGES: Final = Path("/sys/kernel/mm/hugepages")
#: The default-size pool (2 MiB on x86): ``echo N >`` this sets its total.
PROC_NR_HUGEPAGES: Final = Path("/proc/sys/vm/nr_hugepages")

#: acrn-dm's defaults and limits (``core/main.c: main``, ``core/vmmapi.c``).
DM_DEFAULT_MEMSIZE: Final = 256 * MiB
DM_MIN_MEMSIZE: Final = 128 * MiB
#: PCI_EMUL_MEMBASE32: lowmem ends here, the rest of -m is highmem at 4 GiB.
DM_LOWMEM_LIMIT: Final = 2 * GiB
#: ``core/hugetlb.c`` FB_SIZE: always allocated, even without a display.
DM_FRAMEBUFFER_SIZE: Final = 16 * MiB

_UNITS: Final = {"k": 10, "m": 20, "g": 30}

# getopt_long's view of acrn-dm's options (``core/main.c``: ``optstr`` and ``long_options``):
# which take an argument, so that a scan never mistakes an option's value for an option.
_SHORT_WITH_ARG: Final = frozenset("EkrBsmlUGi")
_LONG_OPTIONS: Final = {
    **dict.fromkeys(
        (
            "elf_file", "ioc_node", "lpc", "pci_slot", "memsize", "kernel", "ramdisk", "bootargs",
            "gvtargs", "mac_seed", "vsbl", "ovmf", "iasl", "cpu_affinity", "part_info",
            "virtio_poll", "intr_monitor", "cmd_monitor", "acpidev_pt", "mmiodev_pt", "vtpm2",
            "ssram", "logger_setting", "pm_notify_channel", "pm_by_vuart",
        ),
        True,
    ),
    **dict.fromkeys(
        (
            "acpi", "mptgen", "version", "help", "enable_trusty", "debugexit", "lapic_pt", "rtvm",
            "windows", "virtio_msi",
        ),
        False,
    ),
}  # fmt: skip


class HugePageError(Exception):
    """A pool cannot be read or reserved; the message says which file and why."""


# ----------------------------------------------------------------------------- acrn-dm's rules
def _strtoul(text: str) -> tuple[int, str]:
    """C ``strtoul(text, &end, 0)`` on the non-negative forms: (value, the unparsed rest)."""
    s = text.lstrip(" \t\n\v\f\r")
    s = s[1:] if s[:1] == "+" else s
    if s[:2].lower() == "0x" and s[2:3] and s[2].lower() in "0123456789abcdef":
        base, digits, i = 16, "0123456789abcdef", 2
    elif s[:1] == "0":
        base, digits, i = 8, "01234567", 1
    else:
        base, digits, i = 10, "0123456789", 0
    j = i
    while j < len(s) and s[j].lower() in digits:
        j += 1
    if j == i:
        # No digits: strtoul returns 0 with end = text (or after the lone "0" of an octal prefix).
        return 0, (s[1:] if base == 8 else text)
    return int(s[i:j], base), s[j:]


def parse_memsize(text: str) -> int:
    """acrn-dm's ``-m`` value in bytes, or ValueError with acrn-dm's own message.

    ``core/vmmapi.c: vm_parse_memsize``: only the units k, m and g are accepted (the no-unit and
    ``b`` cases fall through into the error branch in v3.3), and at least 128 MiB.
    """
    value, rest = _strtoul(text)
    unit = rest[:1].lower()
    if unit not in _UNITS:
        raise ValueError(f"invalid memsize '{text}'")
    size = value << _UNITS[unit]
    if size < DM_MIN_MEMSIZE:
        raise ValueError(f"invalid memsize '{text}'")
    return size


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


@dataclass(frozen=True)
class DmMemory:
    """The four hugetlb-backed regions acrn-dm maps for one guest (bytes)."""

    lowmem: int
    highmem: int
    bios: int
    framebuffer: int = DM_FRAMEBUFFER_SIZE

    @property
    def total(self) -> int:
        return self.lowmem + self.highmem + self.bios + self.framebuffer

    @property
    def pages_2m(self) -> int:
        """2 MiB pages needed when no 1 GiB pages are used (the usual case)."""
        return self.total // HUGE_2M

    def split(self) -> tuple[int, int]:
        """(1 GiB pages, 2 MiB pages) when the 1 GiB pool can serve its part.

        ``core/hugetlb.c: hugetlb_setup_memory`` gives the 1 GiB pool each region rounded down to
        1 GiB (the framebuffer, 16 MiB, never) and the 2 MiB pool the remainders.
        """
        big = sum(r // HUGE_1G for r in (self.lowmem, self.highmem, self.bios))
        return big, (self.total - big * HUGE_1G) // HUGE_2M


def dm_memory(memsize: int = DM_DEFAULT_MEMSIZE, ovmf_size: int = 0) -> DmMemory:
    """``core/vmmapi.c: vm_setup_memory`` for a memory size and an OVMF image size."""
    lowmem = min(memsize, DM_LOWMEM_LIMIT)
    mem = DmMemory(lowmem=lowmem, highmem=memsize - lowmem, bios=_round_up(ovmf_size, HUGE_2M))
    if mem.lowmem % HUGE_2M or mem.highmem % HUGE_2M:
        # acrn-dm: "Memory size is not aligned to 2M." (core/hugetlb.c: hugetlb_setup_memory)
        raise ValueError(f"memory size {memsize:#x} is not a multiple of 2 MiB (acrn-dm refuses it)")
    return mem


def _ovmf_size(arg: str, file_size: Callable[[str], int]) -> int:
    """``core/sw_load_ovmf.c: acrn_parse_ovmf`` / ``ovmf_image_size``: one image, or code + vars."""
    single = code = vars_ = None
    for token in arg.split(","):
        if token == "w":
            continue
        if token.startswith("code="):
            code = token[5:]
        elif token.startswith("vars="):
            vars_ = token[5:]
        else:
            single = token
    try:
        if single is not None:
            return file_size(single)
        if code is not None and vars_ is not None:
            return file_size(code) + file_size(vars_)
    except OSError as e:
        raise ValueError(f"--ovmf {arg}: {e.filename or ''}: {e.strerror}") from None
    return 0


def _long_option(name: str) -> tuple[str, bool]:
    """getopt_long's match: the exact name, else the one option it is an unambiguous prefix of."""
    if name in _LONG_OPTIONS:
        return name, _LONG_OPTIONS[name]
    matches = [n for n in _LONG_OPTIONS if n.startswith(name)]
    if len(matches) == 1:
        return matches[0], _LONG_OPTIONS[matches[0]]
    raise ValueError(f"unrecognised or ambiguous option '--{name}'")


def memory_from_argv(argv: Sequence[str], *, file_size: Callable[[str], int] = os.path.getsize) -> DmMemory:
    """The regions an acrn-dm command line (its arguments, without the program) maps.

    Reads ``-m``/``--memsize`` (the last one wins, as in acrn-dm's option loop) and ``--ovmf``
    (whose files are sized with ``file_size``), skipping every other option's value.
    """
    memsize, ovmf_size = DM_DEFAULT_MEMSIZE, 0
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if arg.startswith("--"):
            name, _, inline = arg[2:].partition("=")
            name, has_arg = _long_option(name)
            value = None
            if has_arg:
                if "=" in arg:
                    value = inline
                elif i < len(argv):
                    value, i = argv[i], i + 1
                else:
                    raise ValueError(f"option '--{name}' requires an argument")
            if name == "memsize" and value is not None:
                memsize = parse_memsize(value)
            elif name == "ovmf" and value is not None:
                ovmf_size = _ovmf_size(value, file_size)
            continue
        if arg.startswith("-") and len(arg) > 1:
            for k, letter in enumerate(arg[1:], start=1):
                if letter in _SHORT_WITH_ARG:
                    if k + 1 < len(arg):
                        value = arg[k + 1 :]
                    elif i < len(argv):
                        value, i = argv[i], i + 1
                    else:
                        raise ValueError(f"option '-{letter}' requires an argument")
                    if letter == "m":
                        memsize = parse_memsize(value)
                    break
            continue
        # A non-option (the VM name): getopt_long permutes, so options may follow it.
    return dm_memory(memsize, ovmf_size)


def pages_needed(argv: Sequence[str], *, file_size: Callable[[str], int] = os.path.getsize) -> int:
    """2 MiB huge pages an acrn-dm command line needs (with no 1 GiB pages in use)."""
    return memory_from_argv(argv, file_size=file_size).pages_2m


# ----------------------------------------------------------------------------- the host's pools
@dataclass(frozen=True)
class Pool:
    """One hugetlb pool as sysfs shows it (``/sys/kernel/mm/hugepages/hugepages-<size>kB/``)."""

    page_size: int
    total: int
    free: int
    #: Pages promised to mappings but not yet faulted in (still counted in ``free``).
    reserved: int = 0

    @property
    def available(self) -> int:
        """Free pages no one has a reservation on: what a new acrn-dm can have."""
        return self.free - self.reserved


def pool_dir(page_size: int = HUGE_2M, root: Path = SYSFS_HUGEPAGES) -> Path:
    return root / f"hugepages-{page_size // KiB}kB"


def read_pool(page_size: int = HUGE_2M, root: Path = SYSFS_HUGEPAGES) -> Pool:
    """The pool of one page size (HugePageError if the kernel has none or it cannot be read)."""
    d = pool_dir(page_size, root)

    def number(name: str) -> int:
        try:
            return int((d / name).read_text().strip())
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) else "not a number"
            raise HugePageError(f"{d / name}: {why}") from None

    return Pool(page_size, number("nr_hugepages"), number("free_hugepages"), number("resv_hugepages"))


def target_total(pool: Pool, needed: int) -> int:
    """The pool size that leaves ``needed`` pages available (the current size if it already does)."""
    return pool.total + max(0, needed - pool.available)


def reserve_command(total: int, page_size: int = HUGE_2M) -> str:
    """The shell command (as root) that sets the pool of ``page_size`` to ``total`` pages.

    ``/proc/sys/vm/nr_hugepages`` is the default-size pool, 2 MiB on x86; other sizes go through
    their own sysfs file.
    """
    path = PROC_NR_HUGEPAGES if page_size == HUGE_2M else pool_dir(page_size) / "nr_hugepages"
    return f"echo {total} > {path}"


def reserve(total: int, nr_hugepages: Path = PROC_NR_HUGEPAGES) -> int:
    """Set a pool's size to ``total`` pages by writing its ``nr_hugepages``; returns what the
    kernel granted (it may give fewer when memory is fragmented: HugePageError then).

    Needs root.  ``nr_hugepages`` is the file to write (default: the 2 MiB pool on x86).
    """
    if total < 0:
        raise ValueError(f"a pool cannot have {total} pages")
    try:
        nr_hugepages.write_text(f"{total}\n")
        granted = int(nr_hugepages.read_text().strip())
    except OSError as e:
        hint = " (needs root)" if e.errno in (errno.EACCES, errno.EPERM) else ""
        raise HugePageError(f"{nr_hugepages}: {e.strerror}{hint}") from None
    if granted < total:
        raise HugePageError(f"{nr_hugepages}: asked for {total} huge pages, the kernel granted {granted}")
    return granted


def shortfall(
    argv: Sequence[str], pool: Pool, *, file_size: Callable[[str], int] = os.path.getsize
) -> str | None:
    """One line telling the user what to reserve before running acrn-dm with ``argv``, or None
    when ``pool`` (the 2 MiB pool, from :func:`read_pool`) already has enough available pages.

    acrn-dm would try to grow the pool itself (``core/hugetlb.c: reserve_more_pages``, as root);
    saying it first keeps the host's settings the user's decision.
    """
    needed = pages_needed(argv, file_size=file_size)
    if pool.available >= needed:
        return None
    total = target_total(pool, needed)
    return (
        f"acrn-dm needs {needed} free 2 MiB huge pages for this guest, {pool.available} are available "
        f"(pool {pool.total}); as root: {reserve_command(total)}"
    )


__all__ = [
    "DM_DEFAULT_MEMSIZE",
    "DM_FRAMEBUFFER_SIZE",
    "DM_LOWMEM_LIMIT",
    "DM_MIN_MEMSIZE",
    "HUGE_1G",
    "HUGE_2M",
    "PROC_NR_HUGEPAGES",
    "SYSFS_HUGEPAGES",
    "DmMemory",
    "HugePageError",
    "Pool",
    "dm_memory",
    "memory_from_argv",
    "pages_needed",
    "parse_memsize",
    "pool_dir",
    "read_pool",
    "reserve",
    "reserve_command",
    "shortfall",
    "target_total",
]
