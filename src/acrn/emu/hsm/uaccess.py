"""User memory as the emulated HSM reaches it: ``copy_from_user``, ``copy_to_user``, page pinning.

An ioctl argument arrives either as a Python buffer (bytearray, memoryview, ctypes object: the
caller's memory, used in place) or as an integer (a raw ``unsigned long``: a user pointer for
struct ioctls, a value for SET_IRQLINE/VM_INTR_MONITOR).  A buffer shorter than what the kernel
reads or writes, or an integer address range that is not mapped in this process, is a fault: the
kernel's ``copy_*_user`` would fail, so the ioctl gives ``-EFAULT`` instead of touching memory.

"Pinning" a user page (``pin_user_pages_fast``) means: the range must be mapped readable and
writable in this process (the HSM always pins with FOLL_WRITE), and it is registered with the
:class:`~acrn.emu.service_vm_memory.ServiceVmMemory` so that the hypervisor may reach it by "physical"
address.  Pins are reference-counted per range because the same page may be pinned twice.
"""

from __future__ import annotations

import ctypes
import threading

from acrn.emu.service_vm_memory import PAGE_SIZE, ServiceVmMemory, is_mapped

PAGE_MASK = ~(PAGE_SIZE - 1) & ((1 << 64) - 1)
U64 = (1 << 64) - 1


class Fault(Exception):
    """A ``copy_*_user`` or pin failure; the ioctl turns it into ``-EFAULT``."""


class UserArg:
    """The ``unsigned long ioctl_param`` plus the memory it may point to."""

    def __init__(self, arg: object) -> None:
        self.obj = arg
        self._view: memoryview | None = None
        self._tmp: ctypes.Array[ctypes.c_char] | None = None
        if isinstance(arg, bool):
            raise TypeError("ioctl argument must be an int or a buffer, not bool")
        if isinstance(arg, int):
            # An `unsigned long`: negative Python ints wrap as they would in C.
            self.value = arg & U64
            return
        if arg is None:
            self.value = 0
            return
        try:
            view = memoryview(arg)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"ioctl argument must be an int or a buffer, not {type(arg).__name__}") from None
        view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
        self._view = view
        if view.readonly:
            # Like fcntl.ioctl with an immutable buffer: the kernel sees a temporary copy.
            self._tmp = ctypes.create_string_buffer(view.tobytes(), max(len(view), 1))
            self.value = ctypes.addressof(self._tmp)
        else:
            holder = (ctypes.c_char * max(len(view), 1)).from_buffer(view) if len(view) else None
            self.value = ctypes.addressof(holder) if holder is not None else 0
            del holder  # do not keep the buffer export alive (a bytearray could not be resized)

    @property
    def is_buffer(self) -> bool:
        return self._view is not None

    def copy_from_user(self, size: int) -> bytes:
        """``size`` bytes at the argument pointer, or :class:`Fault`."""
        if self._view is not None:
            if len(self._view) < size:
                raise Fault(f"buffer of {len(self._view)} bytes, the kernel reads {size}")
            return self._view[:size].tobytes()
        if not is_mapped(self.value, size):
            raise Fault(f"user address {self.value:#x}+{size} not mapped")
        return ctypes.string_at(self.value, size)

    def copy_to_user(self, data: bytes) -> None:
        """Write ``data`` back at the argument pointer, or :class:`Fault`."""
        if self._view is not None:
            if len(self._view) < len(data):
                raise Fault(f"buffer of {len(self._view)} bytes, the kernel writes {len(data)}")
            if self._view.readonly:
                return  # fcntl.ioctl semantics: an immutable buffer is not written back
            self._view[: len(data)] = data
            return
        if not is_mapped(self.value, len(data), write=True):
            raise Fault(f"user address {self.value:#x}+{len(data)} not mapped writable")
        ctypes.memmove(self.value, data, len(data))

    def release(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None
        self._tmp = None


class PinTable:
    """Reference-counted registrations of pinned user ranges in the Service VM memory."""

    def __init__(self, memory: ServiceVmMemory) -> None:
        self._memory = memory
        self._lock = threading.Lock()
        self._pins: dict[int, list[tuple[int, object]]] = {}

    def pin(self, addr: int, size: int, keepalive: object = None) -> None:
        """``pin_user_pages_fast(FOLL_WRITE)``: raises :class:`Fault` if not mapped writable."""
        if size <= 0 or not is_mapped(addr, size, write=True):
            raise Fault(f"cannot pin {addr:#x}+{size}")
        with self._lock:
            entries = self._pins.setdefault(addr, [])
            entries.append((size, keepalive))
            self._memory.register(addr, max(s for s, _ in entries), entries)

    def unpin(self, addr: int, size: int) -> None:
        with self._lock:
            entries = self._pins.get(addr)
            if not entries:
                return
            for i, (s, _) in enumerate(entries):
                if s == size:
                    del entries[i]
                    break
            if entries:
                self._memory.register(addr, max(s for s, _ in entries), entries)
            else:
                del self._pins[addr]
                self._memory.unregister(addr)

    def count(self) -> int:
        """Number of live pins (for leak tests)."""
        with self._lock:
            return sum(len(v) for v in self._pins.values())
