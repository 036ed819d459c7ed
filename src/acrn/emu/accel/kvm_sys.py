"""KVM system calls: ioctls that name the request they failed on, and the vCPU kick signal.

Kicking a vCPU (:meth:`acrn.emu.accel.kvm.KvmVcpu.kick`) needs a real-time signal whose handler is
a no-op, so that the signal only interrupts ``KVM_RUN`` (EINTR) and never kills the process.  Python
lets only the main thread install handlers: call :func:`install_kick_handler` once from the main
thread before vCPUs run on other threads (:meth:`acrn.emu.accel.kvm.KvmAccelerator.create_vm` does
it when it is called on the main thread).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import threading
from typing import Final

#: The real-time signal used to interrupt ``KVM_RUN`` on a vCPU thread.
KICK_SIGNAL: Final = int(signal.SIGRTMIN) + 4


def _noop_signal_handler(signum: int, frame: object) -> None:
    """Does nothing: the kick signal exists only to make ``KVM_RUN`` return EINTR."""


def install_kick_handler() -> None:
    """Install the no-op handler of :data:`KICK_SIGNAL`; call once, from the main thread.

    Idempotent.  A handler already installed by someone else is kept (any real handler makes the
    signal interrupt ``KVM_RUN``); only the default action (terminate) or "ignore" (the signal
    would then never interrupt anything) is replaced.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("install_kick_handler() must be called from the main thread")
    if not kick_handler_installed():
        signal.signal(KICK_SIGNAL, _noop_signal_handler)


def kick_handler_installed() -> bool:
    """Whether :data:`KICK_SIGNAL` has a handler, so that sending it is safe and interrupts."""
    return signal.getsignal(KICK_SIGNAL) not in (signal.SIG_DFL, signal.SIG_IGN, None)


def kvm_ioctl(fd: int, name: str, request: int, arg: int | bytearray | ctypes.Structure = 0) -> int:
    """``ioctl`` raising OSError that names the KVM request (for everything but the run loop)."""
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as e:
        raise OSError(e.errno, f"{name}: {os.strerror(e.errno or 0)}") from None


_libc = ctypes.CDLL(None, use_errno=True)
_libc_ioctl = _libc.ioctl
_libc_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)
_libc_ioctl.restype = ctypes.c_int


def kvm_ioctl_ulong(fd: int, name: str, request: int, value: int) -> int:
    """An ioctl whose argument is an unsigned long by value.

    ``fcntl.ioctl`` passes integers as a C ``int``, which cannot carry 0xFFFBD000 (and a negative
    int would be sign-extended into an address KVM refuses), so this goes through libc directly.
    """
    ret = int(_libc_ioctl(fd, request, value))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return ret
