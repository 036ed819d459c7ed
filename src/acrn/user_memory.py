"""The client's memory for guest RAM and the ioreq page: page-aligned user memory of this process.

The HSM takes *user virtual addresses* (``vma_base`` for RAM, ``ioreq_buf`` for the request page)
and pins the pages behind them, so the memory must stay mapped for as long as the VM uses it.
:class:`HostMemory` is an anonymous ``mmap`` with its address exposed, released by ``close()``.
"""

from __future__ import annotations

import ctypes
import mmap

from acrn import uapi

PAGE_SIZE = mmap.PAGESIZE


def _address_of(m: mmap.mmap) -> int:
    # A ctypes view pins the mmap (close() would raise BufferError); take the address and drop it.
    view = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(view)
    del view
    return addr


class HostMemory:
    """An anonymous, page-aligned, read-write mapping of ``size`` bytes (rounded up to pages)."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"memory size must be positive, got {size}")
        self.size = (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
        self._mmap: mmap.mmap | None = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.address = _address_of(self._mmap)

    @property
    def buffer(self) -> mmap.mmap:
        if self._mmap is None:
            raise ValueError("memory is closed")
        return self._mmap

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError(f"write of {len(data)} bytes at {offset:#x} is outside {self.size:#x} bytes")
        self.buffer[offset : offset + len(data)] = bytes(data)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise ValueError(f"read of {length} bytes at {offset:#x} is outside {self.size:#x} bytes")
        return self.buffer[offset : offset + length]

    def close(self) -> None:
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    @property
    def closed(self) -> bool:
        return self._mmap is None

    def __enter__(self) -> HostMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IoreqPage(HostMemory):
    """The 4 KiB shared ioreq page (16 slots of ``acrn_io_request``), as acrn-dm's static page."""

    def __init__(self) -> None:
        super().__init__(uapi.ACRN_IO_REQUEST_BUFFER_SIZE)
        self.slots = uapi.acrn_io_request_buffer.from_address(self.address)

    def slot(self, vcpu: int) -> uapi.acrn_io_request:
        slot: uapi.acrn_io_request = self.slots.req_slot[vcpu]
        return slot
