"""Transports at the ioctl boundary: the real ``/dev/acrn_hsm`` or the emulated HSM.

Both take exactly what ``fcntl.ioctl(fd, cmd, arg, True)`` takes: ``cmd`` the full 32-bit ioctl
number, ``arg`` a mutable buffer (bytearray, memoryview, ctypes object; updated in place where the
kernel writes back) or an integer (a user pointer, or the value of SET_IRQLINE/VM_INTR_MONITOR).
They return the ioctl's non-negative result or raise ``OSError`` with the errno.

Every ioctl is logged on ``logging.getLogger("acrn.trace")`` at DEBUG, strace-like::

    ACRN_IOCTL_CREATE_VM({vmid=0, ..., ioreq_buf=0x7f...}) = 0 => {vmid=1, vcpu_num=2, ...}
    ACRN_IOCTL_START_VM() = -1 EPERM
    ACRN_IOCTL_NOTIFY_REQUEST_FINISH({vmid=1, reserved=0, vcpu=0}) = 0  # pio out 0x3f8 size 1 = 0x68 'h'

NOTIFY_REQUEST_FINISH names the request it completes (a caller that knows the slot says so with
:func:`trace_note`).  The ioreq loop's ATTACH, issued once per scan, is logged on
``acrn.trace.attach`` (``acrn -vv``), except when it fails.

Example::

    from acrn.device import open_device
    with open_device("emulated") as dev:
        dev.ioctl(uapi.ACRN_IOCTL_PAUSE_VM, 0)   # OSError EINVAL: no VM yet (hsm.c: acrn_dev_ioctl)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from acrn import uapi
from acrn.errors import HsmError

if TYPE_CHECKING:
    from acrn.emu.control import EmulatorControl
    from acrn.emu.hsm import HsmFile
    from acrn.emu.machine import Machine

trace = logging.getLogger("acrn.trace")
#: ATTACH_IOREQ_CLIENT returns once per scan of the ioreq page: hundreds of lines that say nothing.
trace_attach = logging.getLogger("acrn.trace.attach")
_notes = threading.local()


def trace_note(text: str) -> None:
    """Attach ``text`` to the next ioctl this thread traces (e.g. the request a NOTIFY completes)."""
    _notes.text = text


DEFAULT_PATH = "/dev/acrn_hsm"


class Device:
    """One open HSM: ``ioctl``, ``close``, context manager, ``fileno``."""

    kind: str = ""
    description: str = ""
    #: The emulator's control port (``acrn.emu.control``) for a device model in the same process;
    #: None for a real or served HSM, which report only what the ioctls report.
    control: EmulatorControl | None = None

    def ioctl(self, cmd: int, arg: Any = 0) -> int:
        """Issue one ioctl, like ``fcntl.ioctl(fd, cmd, arg, True)``; traced on ``acrn.trace``."""
        cmd &= 0xFFFFFFFF
        if isinstance(arg, bytes):
            arg = bytearray(arg)  # as fcntl does with an immutable buffer: a copy, never written back
        if not trace.isEnabledFor(logging.DEBUG):
            return self._ioctl(cmd, arg)
        name = uapi.IOCTL_NAMES.get(cmd, f"{cmd:#010x}")
        before = _describe(cmd, arg)
        note = getattr(_notes, "text", None)
        _notes.text = None
        suffix = f"  # {note}" if note else ""
        try:
            ret = self._ioctl(cmd, arg)
        except OSError as e:
            ename = errno.errorcode.get(e.errno or 0, str(e.errno))
            if cmd == uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT and e.errno == errno.ENODEV:
                # How every ioreq loop ends: DESTROY_IOREQ_CLIENT wakes the blocked ATTACH.
                suffix = "  # the client was destroyed: the ioreq loop ends"
            trace.debug("%s(%s) = -1 %s (%s)%s", name, before, ename, os.strerror(e.errno or 0), suffix)
            raise
        after = ""
        if uapi.ioc_dir(cmd) & 2 and not isinstance(arg, int):
            after = " => " + _describe(cmd, arg)
        log = trace_attach if cmd == uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT else trace
        log.debug("%s(%s) = %d%s%s", name, before, ret, after, suffix)
        return ret

    def _ioctl(self, cmd: int, arg: Any) -> int:
        raise NotImplementedError

    def notify_request_finish(self, vmid: int, vcpu: int) -> int:
        """ACRN_IOCTL_NOTIFY_REQUEST_FINISH {vmid, 0, vcpu}: the ioreq hot path's one ioctl.

        Transports may take a shorter route with the same effect (the emulator skips encoding
        the struct while the trace is off); this one issues the ioctl.
        """
        return self.ioctl(uapi.ACRN_IOCTL_NOTIFY_REQUEST_FINISH, uapi.acrn_ioreq_notify(vmid, 0, vcpu))

    def attach_ioreq_client(self) -> int:
        """ACRN_IOCTL_ATTACH_IOREQ_CLIENT: the faithful ioreq loop's blocking call, once per scan.

        As for :meth:`notify_request_finish`, transports may take a shorter route with the same
        effect; this one issues the ioctl.
        """
        return self.ioctl(uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT)

    def fileno(self) -> int | None:
        return None

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


class KernelDevice(Device):
    """The real HSM: ``os.open`` and ``fcntl.ioctl`` (integers go through libc's ioctl as unsigned long)."""

    kind = "kernel"

    def __init__(self, path: str = DEFAULT_PATH) -> None:
        self.path = path
        try:
            self.fd: int | None = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise HsmError(e.errno or errno.EIO, f"open {path}", _open_hint(e.errno, path)) from None
        self.description = f"{path} (kernel HSM driver)"

    def _ioctl(self, cmd: int, arg: Any) -> int:
        if self.fd is None:
            raise OSError(errno.EBADF, "device is closed")
        if isinstance(arg, int):
            # fcntl.ioctl only takes a C int here; SET_IRQLINE's value and pointers need 64 bits.
            ret = _libc_ioctl(self.fd, cmd, arg & 0xFFFFFFFFFFFFFFFF)
            if ret < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            return ret
        return int(fcntl.ioctl(self.fd, cmd, arg, True))

    def fileno(self) -> int | None:
        return self.fd

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _open_hint(err: int | None, path: str) -> str:
    """Why /dev/acrn_hsm did not open, and what to do."""
    if err == errno.ENOENT:
        return (
            "no ACRN HSM driver here (the device exists only in an ACRN Service VM with "
            "CONFIG_ACRN_HSM); pyacrn's emulator needs none: Hsm.open('emulated'), acrn --device emulated"
        )
    if err in (errno.EACCES, errno.EPERM):
        return f"{path} needs root (or its group's access); kind='emulated' needs no privileges"
    if err == errno.ENODEV:
        return "the HSM driver is loaded but not running on the ACRN hypervisor"
    return "kind='emulated' uses pyacrn's emulator instead"


_libc: ctypes.CDLL | None = None


def _libc_ioctl(fd: int, cmd: int, value: int) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
        _libc.ioctl.restype = ctypes.c_int
    return int(_libc.ioctl(fd, cmd, value))


class EmulatedDevice(Device):
    """An fd of the emulated HSM on a :class:`~acrn.emu.machine.Machine` (the process-wide one by default)."""

    kind = "emulated"

    def __init__(self, machine: Machine | None = None) -> None:
        from acrn.emu.control import EmulatorControl
        from acrn.emu.machine import default_machine

        self.machine: Machine = machine if machine is not None else default_machine()
        self.control = EmulatorControl(self.machine.runtime)
        self.file: HsmFile | None = self.machine.open()
        self._regs_set: set[int] = set()  # vCPUs given SET_VCPU_REGS since the latest START/RESET
        self.description = "emulated HSM driver + ACRN hypervisor (pyacrn)"

    def _ioctl(self, cmd: int, arg: Any) -> int:
        if self.file is None:
            raise OSError(errno.EBADF, "device is closed")
        ret = self.file.ioctl(cmd, arg)
        if cmd == uapi.ACRN_IOCTL_SET_VCPU_REGS and not isinstance(arg, int):
            # Registers set while PAUSED are newer than what the vCPU stopped with (vcpu_state).
            with contextlib.suppress(TypeError, ValueError):
                self._regs_set.add(int.from_bytes(bytes(memoryview(arg).cast("B")[:2]), "little"))
        elif cmd in (uapi.ACRN_IOCTL_START_VM, uapi.ACRN_IOCTL_RESET_VM):
            self._regs_set.clear()
        return ret

    def notify_request_finish(self, vmid: int, vcpu: int) -> int:
        """The driver's NOTIFY_REQUEST_FINISH without the struct round trip (same checks and
        errors, :meth:`HsmFile.notify_request_finish`); the traced ioctl while ``acrn.trace`` logs."""
        f = self.file
        if f is None or trace.isEnabledFor(logging.DEBUG):
            return super().notify_request_finish(vmid, vcpu)
        return f.notify_request_finish(vcpu & 0xFFFFFFFF)

    def attach_ioreq_client(self) -> int:
        """The driver's ATTACH_IOREQ_CLIENT without the generic ioctl entry (same checks and
        errors, :meth:`HsmFile.attach_ioreq_client`); the traced ioctl while ``acrn.trace`` logs."""
        f = self.file
        if f is None or trace.isEnabledFor(logging.DEBUG):
            return super().attach_ioreq_client()
        return f.attach_ioreq_client()

    @property
    def vmid(self) -> int:
        """The fd's vmid as the driver holds it (``ACRN_INVALID_VMID`` when there is no VM)."""
        return self.file.vm.vmid if self.file is not None else uapi.ACRN_INVALID_VMID

    def vcpu_state(self, vcpu_id: int) -> dict[str, Any]:
        """A vCPU's architectural state (``CpuState.to_dict``): live in a PAUSED VM (what the
        accelerator stopped with), the landed state before START, after RESET or SET_VCPU_REGS,
        and for a vCPU that never ran; EBUSY while the VM runs."""
        vmid = self.vmid
        if vmid == uapi.ACRN_INVALID_VMID:
            raise HsmError(errno.EINVAL, "vcpu_state", "no VM on this fd")
        from acrn.emu.hv.state import VmState

        hv = self.machine.hv
        hv_vm = hv.vm(vmid)
        if hv_vm is not None and hv_vm.state in (VmState.RUNNING, VmState.READY_TO_POWEROFF):
            raise HsmError(
                errno.EBUSY,
                "vcpu_state",
                f"VM {vmid} is {hv_vm.state.name}: its registers change under the read; pause() first",
            )
        try:
            landed = hv.vcpu_state(vmid, vcpu_id).to_dict()
        except KeyError:
            raise HsmError(errno.EINVAL, "vcpu_state", f"VM {vmid} has no vCPU {vcpu_id}") from None
        if hv_vm is not None and hv_vm.state == VmState.PAUSED:
            # Paused after running: the accelerator holds the registers the vCPU stopped with.
            vmrt = self.machine.runtime.vms.get(vmid)
            live = vmrt.live_state(vcpu_id) if vmrt is not None and vcpu_id not in self._regs_set else None
            if live is not None:
                return dict(live.to_dict())
        return landed

    def interrupt_attach(self) -> None:
        """Emulate a signal to a thread blocked in ATTACH_IOREQ_CLIENT (it returns 0)."""
        if self.file is not None:
            self.file.interrupt_attach()

    def close(self) -> None:
        if self.file is not None:
            f, self.file = self.file, None
            f.release()


def open_device(kind: str = "auto", **kwargs: Any) -> Device:
    """Open an HSM: ``"kernel"`` (/dev/acrn_hsm), ``"emulated"`` (in this process), ``"service"``
    (the host's ``acrn hv``), or ``"auto"`` (kernel if present, else the emulator).

    Keyword arguments go to the chosen class: ``path`` for the kernel, ``machine`` for the emulator,
    ``socket`` for the service (default ``$ACRN_HV_SOCKET`` or the service's default path).
    """
    if kind == "auto":
        path = kwargs.get("path", DEFAULT_PATH)
        if os.path.exists(path):
            kind = "kernel"
        elif kwargs.get("socket") or os.environ.get("ACRN_HV_SOCKET"):
            kind = "service"
        else:
            kind = "emulated"
        for key, users in (("path", "kernel"), ("machine", "emulated"), ("socket", "service")):
            if kind != users:
                kwargs.pop(key, None)
    if kind == "kernel":
        return KernelDevice(**kwargs)
    if kind == "emulated":
        return EmulatedDevice(**kwargs)
    if kind == "service":
        from acrn.service.client import ServiceDevice

        return ServiceDevice(**kwargs)
    raise ValueError(f"unknown device kind {kind!r} (choose auto, kernel, emulated or service)")


def describe_arg(cmd: int, arg: Any) -> str:
    """An ioctl argument as the trace shows it (a decoded struct, a value, or a pointer)."""
    return _describe(cmd, arg)


def _describe(cmd: int, arg: Any) -> str:
    """The argument as strace would show it: a decoded struct, a value, or a pointer."""
    ctype = uapi.IOCTL_ARG.get(cmd)
    if ctype is None:
        return "" if cmd in uapi.IOCTL_NAMES else _raw(arg)
    if isinstance(arg, int):
        return f"{arg:#x}"
    if ctype == "value":
        return "<buffer>"
    try:
        raw = bytes(memoryview(arg).cast("B"))
    except (TypeError, ValueError):
        return "<?>"
    if ctype == "u64ptr":
        if len(raw) < 8:
            return f"<{len(raw)} bytes>"
        return f"[{int.from_bytes(raw[:8], 'little'):#x}]"
    assert not isinstance(ctype, str)
    if len(raw) < ctypes.sizeof(ctype):
        return f"<{len(raw)} bytes, short>"
    return _fmt(uapi.decode(ctype.from_buffer_copy(raw)))


def describe_request(slot: uapi.acrn_io_request) -> str:
    """One ioreq slot as a trace reads it: kind, direction, address, size and value."""
    kind = slot.type
    if kind == uapi.ACRN_IOREQ_TYPE_PORTIO:
        r: Any = slot.reqs.pio_request
        what = f"pio {'in' if r.direction == uapi.ACRN_IOREQ_DIR_READ else 'out'} {r.address:#x}"
    elif kind == uapi.ACRN_IOREQ_TYPE_MMIO:
        r = slot.reqs.mmio_request
        what = f"mmio {'read' if r.direction == uapi.ACRN_IOREQ_DIR_READ else 'write'} {r.address:#x}"
    elif kind == uapi.ACRN_IOREQ_TYPE_PCICFG:
        r = slot.reqs.pci_request
        rw = "read" if r.direction == uapi.ACRN_IOREQ_DIR_READ else "write"
        what = f"pci {rw} {r.bus:02x}:{r.dev:02x}.{r.func} reg {r.reg:#x}"
    else:
        return f"request type {kind}"
    size = int(r.size)
    value = int(r.value) & ((1 << (8 * min(size, 8))) - 1 if size else 0xFFFFFFFF)
    arrow = "->" if r.direction == uapi.ACRN_IOREQ_DIR_READ else "="
    text = f"{what} size {size} {arrow} {value:#x}"
    if size == 1 and 32 <= value < 127:
        text += f" {chr(value)!r}"
    return text


def _raw(arg: Any) -> str:
    return f"{arg:#x}" if isinstance(arg, int) else "<buffer>"


def _fmt(v: object) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        if v and all(x == 0 for x in v):
            return f"[0 x{len(v)}]"
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, int):
        return str(v) if v < 10 else f"{v:#x}"
    return repr(v)
