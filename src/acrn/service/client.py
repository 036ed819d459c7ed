"""Python's way onto the hypervisor service: the preload library, called through ctypes.

:class:`ServiceDevice` is an HSM transport (``acrn.device``) whose fd is a connection to
``acrn hv``.  It does not speak the protocol itself: it loads the same C library that
``acrn exec`` preloads into foreign programs and calls its ``acrn_preload_open`` and ``ioctl``,
so Python and C clients share one implementation of the client side (argument bytes, shared
memory, channels, signals).
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Any

from acrn.device import KernelDevice
from acrn.service.server import default_socket_path

_lib: ctypes.CDLL | None = None


class PreloadMissing(RuntimeError):
    """The preload library was not built (no C compiler when pyacrn was installed)."""


def preload_library() -> Path:
    """The built preload library, or :class:`PreloadMissing` saying why it is absent."""
    here = Path(__file__).parent
    found = sorted(here.glob("_preload*.so"))
    if not found:
        raise PreloadMissing(
            "pyacrn's preload library was not built (it needs a C compiler when pyacrn is installed): "
            "install gcc and reinstall pyacrn"
        )
    return found[0]


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(str(preload_library()), use_errno=True)
        lib.acrn_preload_open.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.acrn_preload_open.restype = ctypes.c_int
        lib.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
        lib.ioctl.restype = ctypes.c_int
        lib.close.argtypes = [ctypes.c_int]
        lib.close.restype = ctypes.c_int
        _lib = lib
    return _lib


class ServiceDevice(KernelDevice):
    """An open file of the HSM of the service at ``socket`` (default: :func:`default_socket_path`)."""

    kind = "service"

    def __init__(self, socket: str | None = None) -> None:
        path = socket or default_socket_path()
        lib = _load()
        fd = lib.acrn_preload_open(path.encode(), os.O_RDWR | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                raise FileNotFoundError(
                    err, f"no pyacrn hypervisor service at {path} (start one with `acrn hv`)", path
                )
            raise OSError(err, f"{path}: {os.strerror(err)}")
        self.path = path
        self.fd = fd
        self.description = f"pyacrn hypervisor service at {path}"
        self._lib = lib

    def _ioctl(self, cmd: int, arg: Any) -> int:
        if self.fd is None:
            raise OSError(errno.EBADF, "device is closed")
        if isinstance(arg, int):
            ptr = arg & 0xFFFFFFFFFFFFFFFF
            keep: Any = None
        else:
            # The kernel reads and writes the caller's memory in place: so does the library.
            keep = arg
            if isinstance(arg, ctypes.Structure | ctypes.Union | ctypes.Array):
                ptr = ctypes.addressof(arg)
            else:
                view = memoryview(arg)
                if view.readonly:
                    keep = ctypes.create_string_buffer(view.tobytes(), max(len(view), 1))
                    ptr = ctypes.addressof(keep)
                else:
                    holder = (ctypes.c_char * max(view.nbytes, 1)).from_buffer(view)
                    keep = holder
                    ptr = ctypes.addressof(holder)
        ret = int(self._lib.ioctl(self.fd, cmd, ptr))
        del keep
        if ret < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return ret

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            # The library's close, not os.close: it forgets the fd and closes this thread's
            # channel of the file (as for a C program, whose close() it interposes).
            if self._lib.close(fd) < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
