"""The Service VM's "physical" memory, as the emulated kernel and hypervisor see it.

On a real system the Service VM's memory is identity-mapped to host physical memory, the HSM
passes ``virt_to_phys()`` of kernel copies to the hypervisor, and pins user pages by virtual
address.  The emulator lives inside the caller's process, so pyacrn uses one identity: a
"Service VM physical address" *is* a virtual address of this process.  A kernel copy is a ctypes
buffer whose address is passed as the hypercall parameter; a pinned user page is used in place.

What must never happen is a crash on a bad address from the caller.  :func:`is_mapped` therefore
asks the kernel (``/proc/self/maps``) before the emulator touches user memory, and
:class:`ServiceVmMemory` keeps a registry of ranges known to be valid (kernel copies, pinned
pages) so the common path does not parse the maps file.
"""

from __future__ import annotations

import bisect
import ctypes
import threading
from dataclasses import dataclass

PAGE_SIZE = 4096


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/self/maps."""

    start: int
    end: int
    readable: bool
    writable: bool
    shared: bool
    path: str


def read_maps() -> list[Mapping]:
    """The current process's mappings, sorted by address."""
    out: list[Mapping] = []
    with open("/proc/self/maps", "rb") as f:
        for raw in f:
            parts = raw.split(maxsplit=5)
            lo, hi = parts[0].split(b"-")
            perms = parts[1]
            out.append(
                Mapping(
                    int(lo, 16),
                    int(hi, 16),
                    perms[0:1] == b"r",
                    perms[1:2] == b"w",
                    perms[3:4] == b"s",
                    parts[5].strip().decode(errors="replace") if len(parts) > 5 else "",
                )
            )
    return out


def is_mapped(addr: int, size: int, *, write: bool = False) -> bool:
    """Whether [addr, addr+size) is mapped readable (and writable if asked) in this process."""
    if size <= 0 or addr < 0 or addr + size > (1 << 64):
        return False
    end = addr + size
    cur = addr
    for m in read_maps():
        if m.end <= cur:
            continue
        if m.start > cur:
            return False
        if not m.readable or (write and not m.writable):
            return False
        cur = m.end
        if cur >= end:
            return True
    return False


class ServiceVmMemory:
    """What the emulated hypervisor can reach with ``copy_from_gpa``/``copy_to_gpa``.

    Addresses are process virtual addresses (see the module docstring).  Registered ranges are
    trusted; anything else is checked against /proc/self/maps, and an unmapped range gives
    ``None``/``False``, as ``copy_from_gpa`` gives -EINVAL in ACRN.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._ranges: dict[int, tuple[int, object]] = {}

    def register(self, addr: int, size: int, keepalive: object = None) -> None:
        """Declare [addr, addr+size) valid; ``keepalive`` is held until :meth:`unregister`."""
        with self._lock:
            if addr not in self._ranges:
                bisect.insort(self._starts, addr)
            self._ranges[addr] = (size, keepalive)

    def unregister(self, addr: int) -> None:
        with self._lock:
            if self._ranges.pop(addr, None) is not None:
                i = bisect.bisect_left(self._starts, addr)
                del self._starts[i]

    def _registered(self, addr: int, size: int) -> bool:
        with self._lock:
            i = bisect.bisect_right(self._starts, addr) - 1
            if i < 0:
                return False
            start = self._starts[i]
            rsize, _ = self._ranges[start]
            return addr + size <= start + rsize

    def valid(self, addr: int, size: int, *, write: bool = False) -> bool:
        """Whether the hypervisor may access [addr, addr+size)."""
        if addr <= 0 or size <= 0:
            return False
        return self._registered(addr, size) or is_mapped(addr, size, write=write)

    def read(self, addr: int, size: int) -> bytes | None:
        """``copy_from_gpa``: the bytes, or None when the range is not mapped."""
        if not self.valid(addr, size):
            return None
        return ctypes.string_at(addr, size)

    def write(self, addr: int, data: bytes) -> bool:
        """``copy_to_gpa``: False when the range is not mapped writable."""
        if not self.valid(addr, len(data), write=True):
            return False
        ctypes.memmove(addr, data, len(data))
        return True

    def kernel_copy(self, data: bytes | bytearray) -> KernelCopy:
        """A kernel allocation holding ``data`` (as memdup_user makes), registered while alive."""
        return KernelCopy(self, data)


class KernelCopy:
    """A registered ctypes buffer; use as a context manager. ``.gpa`` is its address."""

    def __init__(self, mem: ServiceVmMemory, data: bytes | bytearray) -> None:
        self._mem = mem
        self.buf = ctypes.create_string_buffer(bytes(data), max(len(data), 1))
        self.size = len(data)
        self.gpa = ctypes.addressof(self.buf)

    def __enter__(self) -> KernelCopy:
        self._mem.register(self.gpa, self.size, self.buf)
        return self

    def __exit__(self, *exc: object) -> None:
        self._mem.unregister(self.gpa)

    def contents(self) -> bytes:
        return self.buf.raw[: self.size]
