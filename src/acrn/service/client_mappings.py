"""Client memory as the service reaches it: files received over the socket, mapped shared.

A client's ioctl argument may carry user addresses (``acrn_vm_creation.ioreq_buf``,
``acrn_vm_memmap.vma_base``, the VM_INTR_MONITOR page).  The kernel pins those pages of the
calling process; the service instead maps the file behind them (a memfd, a hugetlb file: the
client library turns private memory into such a file first) at an address of its own, and the
emulated HSM driver is handed that address.  Guest memory is therefore shared, never copied,
as in vhost-user.  A mapping is made with the client's protection, so a read-only client page
fails the driver's write pin with EFAULT exactly as ``pin_user_pages_fast(FOLL_WRITE)`` does.

Addresses the kernel could not pin (unmapped, read-only, unshareable) are replaced by an
address in :data:`GUARD`, a PROT_NONE region with the same offset inside the page, so that the
driver's checks (alignment, length) run unchanged and its pin fails with EFAULT.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import mmap
import os
import stat
import threading

from acrn.service import protocol

log = logging.getLogger("acrn.service")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FAILED = ctypes.c_void_p(-1).value
PAGE = mmap.PAGESIZE
PROT_NONE = 0


def map_fd(fd: int, length: int, offset: int, prot: int) -> int:
    """``mmap(NULL, length, prot, MAP_SHARED, fd, offset)``: the address, or OSError."""
    addr = _libc.mmap(None, length, prot, mmap.MAP_SHARED, fd, offset)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(addr)


def map_anon(length: int, prot: int) -> int:
    addr = _libc.mmap(None, length, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(addr)


def unmap(addr: int, length: int) -> None:
    _libc.munmap(addr, length)


#: Two PROT_NONE pages: where addresses that cannot be pinned are sent.
GUARD: int = map_anon(2 * PAGE, PROT_NONE)


def guard_address(client_addr: int) -> int:
    """An address that faults, with the client address's offset inside its page."""
    return GUARD + (client_addr & (PAGE - 1))


class ClientMemory:
    """The mappings of one open file's client memory, kept until the file is released.

    Mappings are cached by the file identity, offset, length and protection, so a client that
    passes the same memory again (every guest reset re-maps nothing, a second SET_MEMSEG of
    the same RAM) shares one mapping.
    """

    #: Upper bound on distinct mappings per open file (the HSM allows 256 RAM mappings per VM).
    MAX_MAPPINGS = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._maps: dict[tuple[int, int, int, int, int], tuple[int, int]] = {}

    def translate(self, mem: protocol.acrn_svc_mem, fd: int, client_addr: int) -> int:
        """The service address of ``client_addr`` inside the client mapping ``mem`` (backed by ``fd``)."""
        if not mem.start <= client_addr < mem.start + mem.len or mem.start % PAGE or mem.len % PAGE:
            return guard_address(client_addr)
        prot = mem.prot & (mmap.PROT_READ | mmap.PROT_WRITE)
        # Where the file allows it (a memfd made sealable, as the preload library makes its own),
        # it can no longer shrink: the client cannot cut a page from under the service's mapping
        # later.  Sealed first, so the size checked below stays.
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or mem.offset + mem.len > st.st_size:
            # A page past the end of the file raises SIGBUS in the service when the driver
            # touches it, which would end every client's VMs; the client's own access faults.
            log.warning(
                "client memory: %d bytes at offset %#x of a file of %d bytes (mode %o); refused",
                mem.len,
                mem.offset,
                st.st_size,
                st.st_mode,
            )
            return guard_address(client_addr)
        key = (st.st_dev, st.st_ino, mem.offset, mem.len, prot)
        with self._lock:
            hit = self._maps.get(key)
            if hit is None:
                if len(self._maps) >= self.MAX_MAPPINGS:
                    log.warning("client memory: more than %d mappings; refusing another", self.MAX_MAPPINGS)
                    return guard_address(client_addr)
                try:
                    base = map_fd(fd, mem.len, mem.offset, prot)
                except OSError as e:
                    log.warning(
                        "client memory: cannot map %d bytes at offset %#x: %s", mem.len, mem.offset, e
                    )
                    return guard_address(client_addr)
                hit = (base, mem.len)
                self._maps[key] = hit
        return int(hit[0]) + (client_addr - int(mem.start))

    @property
    def mapped_bytes(self) -> int:
        with self._lock:
            return sum(length for _, length in self._maps.values())

    def close(self) -> None:
        """Unmap everything (after the driver released the file: no VM uses the pages any more)."""
        with self._lock:
            maps, self._maps = self._maps, {}
        for base, length in maps.values():
            unmap(base, length)


class Scratch:
    """An argument the client could only partly read, or not write: its bytes end where the
    readable (or writable) memory ends, followed by a PROT_NONE page, so the driver's
    ``copy_from_user``/``copy_to_user`` faults exactly where the client's would."""

    def __init__(self, data: bytes, *, read_only: bool) -> None:
        self.size = 2 * PAGE
        self.base = map_anon(self.size, mmap.PROT_READ | mmap.PROT_WRITE)
        _libc.mprotect(self.base + PAGE, PAGE, PROT_NONE)
        self.address = self.base + PAGE - len(data)
        ctypes.memmove(self.address, data, len(data))
        self.length = len(data)
        if read_only:
            _libc.mprotect(self.base, PAGE, mmap.PROT_READ)

    def read(self) -> bytes:
        return ctypes.string_at(self.address, self.length)

    def close(self) -> None:
        unmap(self.base, self.size)
