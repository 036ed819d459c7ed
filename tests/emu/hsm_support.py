"""Helpers shared by the emulated-HSM conformance tests (no tests here).

:class:`Env` is one emulated machine with one open device; user memory comes from anonymous
mmaps (page-aligned, as the HSM's pinning needs) and is addressed through ctypes.
"""

from __future__ import annotations

import ctypes
import mmap
import threading
from collections.abc import Iterator
from typing import Any

from acrn import uapi
from acrn.device import EmulatedDevice
from acrn.emu.hv.vm import HvVm
from acrn.emu.machine import Machine


class UserMem:
    """Page-aligned user memory (an anonymous mmap) with its address."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.map = mmap.mmap(-1, size)
        holder = ctypes.c_char.from_buffer(self.map)
        self.addr = ctypes.addressof(holder)
        del holder  # no buffer export may outlive this, or the mmap could not be closed

    def read(self, off: int, n: int) -> bytes:
        return ctypes.string_at(self.addr + off, n)

    def write(self, off: int, data: bytes) -> None:
        ctypes.memmove(self.addr + off, data, len(data))

    def protect(self, prot: int) -> None:
        """mprotect the whole mapping (e.g. PROT_READ: pinning for write then fails)."""
        assert _libc.mprotect(ctypes.c_void_p(self.addr), self.size, prot) == 0

    def close(self) -> None:
        self.map.close()


_libc = ctypes.CDLL(None)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def readonly_copy(data: bytes) -> UserMem:
    """A read-only page holding ``data``."""
    m = UserMem(4096)
    m.write(0, data)
    m.protect(mmap.PROT_READ)
    return m


def creation(
    name: bytes = b"hsm-test", ioreq_buf: int = 0, vm_flag: int = 0, cpu_affinity: int = 0
) -> uapi.acrn_vm_creation:
    c = uapi.acrn_vm_creation(vm_flag=vm_flag, ioreq_buf=ioreq_buf, cpu_affinity=cpu_affinity)
    ctypes.memmove(c.uuid.b, name, len(name))
    return c


class HypercallSpy:
    """Records every hypercall the driver issues (id, p1, p2, ret), passing it through to the hv."""

    def __init__(self, machine: Machine) -> None:
        self.calls: list[tuple[int, int, int, int]] = []
        self.event = threading.Event()
        hv = machine.hv
        real = hv.hypercall

        def spy(hcid: int, p1: int = 0, p2: int = 0) -> int:
            ret = real(hcid, p1, p2)
            self.calls.append((hcid, p1, p2, ret))
            self.event.set()
            return ret

        hv.hypercall = spy  # type: ignore[method-assign]

    def ids(self) -> list[int]:
        return [c[0] for c in self.calls]

    def of(self, hcid: int) -> list[tuple[int, int, int, int]]:
        return [c for c in self.calls if c[0] == hcid]


class Env:
    """A fresh machine, one emulated device on it, and an ioreq page."""

    def __init__(self) -> None:
        self.machine = Machine()
        self.hv = self.machine.hv
        self.dev = EmulatedDevice(self.machine)
        self.page = UserMem(4096)
        self._mems: list[UserMem] = [self.page]
        self._devs: list[EmulatedDevice] = [self.dev]

    # -------------------------------------------------------------- helpers
    def mem(self, size: int = 4096) -> UserMem:
        m = UserMem(size)
        self._mems.append(m)
        return m

    def open(self) -> EmulatedDevice:
        d = EmulatedDevice(self.machine)
        self._devs.append(d)
        return d

    def err(self, cmd: int, arg: Any = 0, dev: EmulatedDevice | None = None) -> int:
        """The errno of the ioctl, or 0 when it succeeded."""
        try:
            (dev or self.dev).ioctl(cmd, arg)
        except OSError as e:
            return int(e.errno or 0)
        return 0

    def create(self, name: bytes = b"hsm-test", dev: EmulatedDevice | None = None, **kw: int) -> int:
        """CREATE_VM with the env's ioreq page (unless another ioreq_buf is given); returns the vmid."""
        kw.setdefault("ioreq_buf", self.page.addr)
        c = creation(name, **kw)
        (dev or self.dev).ioctl(uapi.ACRN_IOCTL_CREATE_VM, c)
        return int(c.vmid)

    def vm(self, vmid: int | None = None) -> HvVm:
        v = self.hv.vm(self.dev.vmid if vmid is None else vmid)
        assert v is not None
        return v

    def slot(self, vcpu: int) -> uapi.acrn_io_request:
        return uapi.acrn_io_request.from_address(self.page.addr + 256 * vcpu)

    def pio(self, vcpu: int, port: int, size: int, direction: int, value: int = 0) -> int:
        return self.hv.insert_request(
            self.dev.vmid,
            vcpu,
            uapi.ACRN_IOREQ_TYPE_PORTIO,
            direction=direction,
            address=port,
            size=size,
            value=value,
        )

    def mmio(self, vcpu: int, addr: int, size: int, direction: int, value: int = 0) -> int:
        return self.hv.insert_request(
            self.dev.vmid,
            vcpu,
            uapi.ACRN_IOREQ_TYPE_MMIO,
            direction=direction,
            address=addr,
            size=size,
            value=value,
        )

    def notify(self, vcpu: int) -> int:
        return self.err(uapi.ACRN_IOCTL_NOTIFY_REQUEST_FINISH, uapi.acrn_ioreq_notify(vcpu=vcpu))

    def keep(self, m: UserMem) -> UserMem:
        self._mems.append(m)
        return m

    def close(self) -> None:
        for d in self._devs:
            d.close()
        for m in self._mems:
            m.close()


def env_fixture() -> Iterator[Env]:
    e = Env()
    try:
        yield e
    finally:
        e.close()
