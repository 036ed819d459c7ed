"""Coverage-guided byte-level fuzzing of the emulated HSM ioctl surface (atheris; issue 7 part 1).

:func:`one_input` reads its bytes as a program of operations on a fresh
``Machine`` (vCPUs on :class:`~harness.NullAccelerator`) with up to three HSM fds: any ioctl of
``harness.IOCTLS``/``UNKNOWN_IOCTLS`` or a raw command number, with argument bytes of random length
and content passed as a buffer, a raw pointer (mapped, read-only, PROT_NONE, kernel, non-canonical)
or a by-value integer; CREATE_VM with a random ioreq_buf, SET_MEMSEG with a random vma_base, the
interrupt-monitor page, guest I/O requests, ATTACH, and close at any point.  After every operation:
no exception but the ioctl's ``OSError``, its errno one docs/ioctls.md allows (``harness.allowed``), and
``harness.check_invariants``; at the end every fd is closed and ``harness.check_released`` holds,
with no fd or thread left behind.  Anything else raises, which atheris reports as a crash.

The bytes are read with ``atheris.FuzzedDataProvider`` when atheris is installed, else with
:class:`ByteReader`, which implements the same methods with the same results, so a crashing input
replays identically under plain pytest.

Run as a script it is a libFuzzer target (``python tests/fuzz/atheris_hsm.py -runs=100000
-max_len=512 [corpus_dir]``) and prints at exit how many inputs, operations and ioctls it ran and
the errno histogram.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import logging
import os
import sys
import threading
import types
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from acrn import uapi
from acrn.emu.hsm import HsmFile
from acrn.emu.hv import VmState
from acrn.emu.machine import Machine

try:
    from .harness import (
        IOCTLS,
        PAGE,
        PAGE_MASK,
        U64,
        UNKNOWN_IOCTLS,
        AddressPool,
        NullAccelerator,
        allowed,
        check_invariants,
        check_released,
        open_fds,
    )
except ImportError:  # run as a script: the package is tests/fuzz, imported as pytest does ("fuzz")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fuzz.harness import (
        IOCTLS,
        PAGE,
        PAGE_MASK,
        U64,
        UNKNOWN_IOCTLS,
        AddressPool,
        NullAccelerator,
        allowed,
        check_invariants,
        check_released,
        open_fds,
    )

try:
    import atheris as atheris  # re-exported: the tests check for it
except ImportError:  # the driver runs without it (ByteReader); only main() needs it
    atheris = None

#: Operations per input at most, so that one input stays fast whatever its length.
MAX_OPS = 96
MAX_FDS = 3
#: Longest ATTACH wait once its release was issued; longer is a hang (a finding).
ATTACH_TIMEOUT = 10.0
PIP_INSTALL = "pip install 'atheris>=2.3'  (or: pip install -e '.[test]' on Linux x86_64)"


class Finding(AssertionError):
    """A rule of the harness broken: a disallowed errno, a bad return value, a hang, a leak."""


# ------------------------------------------------------------------------------ the byte source
class Provider(Protocol):
    def remaining_bytes(self) -> int: ...
    def ConsumeBytes(self, count: int) -> bytes: ...
    def ConsumeUInt(self, size: int) -> int: ...


class ByteReader:
    """The part of ``atheris.FuzzedDataProvider`` the driver uses, with the same results.

    Both read from the front: ``ConsumeUInt(n)`` is the next ``min(n, remaining)`` bytes as a
    little-endian unsigned integer (0 when none are left), ``ConsumeBytes(n)`` the next bytes.
    """

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    def remaining_bytes(self) -> int:
        return len(self._data) - self._pos

    def ConsumeBytes(self, count: int) -> bytes:
        out = self._data[self._pos : self._pos + max(count, 0)]
        self._pos += len(out)
        return out

    def ConsumeUInt(self, size: int) -> int:
        return int.from_bytes(self.ConsumeBytes(size), "little")


def provider(data: bytes) -> Provider:
    """atheris' provider where atheris is installed (what libFuzzer's mutations are tuned to)."""
    if atheris is not None:
        return atheris.FuzzedDataProvider(data)  # type: ignore[no-any-return]
    return ByteReader(data)


# ------------------------------------------------------------------------------ counters
@dataclass
class Stats:
    """What the driver executed: the evidence that inputs reach the ioctls (and the printed count)."""

    inputs: int = 0
    ioctls: int = 0
    refused: int = 0
    #: Operations run, by name (see ``OP_NAMES``).
    ops: Counter[str] = field(default_factory=Counter)
    #: Successful ioctls by name (``ACRN_IOCTL_...``, or the hex number of an unknown command).
    succeeded: Counter[str] = field(default_factory=Counter)
    #: Refused ioctls by errno name.
    errnos: Counter[str] = field(default_factory=Counter)
    #: Refused ioctls by (name, errno name): which rule answered.
    refusals: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Every 32-bit command number tried.
    tried: set[int] = field(default_factory=set)

    def reset(self) -> None:
        self.inputs = self.ioctls = self.refused = 0
        self.ops.clear()
        self.succeeded.clear()
        self.errnos.clear()
        self.refusals.clear()
        self.tried.clear()

    def summary(self) -> str:
        hist = ", ".join(f"{k} {v}" for k, v in self.errnos.most_common())
        ok = ", ".join(f"{k.removeprefix('ACRN_IOCTL_')} {v}" for k, v in sorted(self.succeeded.items()))
        return (
            f"atheris_hsm: {self.inputs} inputs, {self.ops.total()} operations, {self.ioctls} ioctls "
            f"({self.refused} refused, {len(self.tried)} distinct commands)\n"
            f"errno: {hist or '-'}\n"
            f"succeeded: {ok or '-'}"
        )


STATS = Stats()
#: The operations, in the order of the input's selector byte (selector % len).
OP_NAMES = [
    "open",
    "close",
    "create_vm",
    "open_vm",
    "lifecycle",
    "any_ioctl",
    "set_vcpu_regs",
    "memseg",
    "intr_monitor",
    "set_irqline",
    "notify",
    "pm_get_cpu_state",
    "ioeventfd",
    "irqfd",
    "guest_io",
    "guest_complete",
    "attach",
]

_NAMES = [b"", b"fuzz-a", b"fuzz-b", b"POST_STD_VM1", b"POST_RT_VM1", b"PRE_STD_VM1", b"ACRN_Service_VM"]
_IO_CMDS = [
    uapi.ACRN_IOCTL_DESTROY_VM,
    uapi.ACRN_IOCTL_START_VM,
    uapi.ACRN_IOCTL_PAUSE_VM,
    uapi.ACRN_IOCTL_RESET_VM,
    uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT,
    uapi.ACRN_IOCTL_DESTROY_IOREQ_CLIENT,
    uapi.ACRN_IOCTL_CLEAR_VM_IOREQ,
]
_STRUCT_CMDS = [c for c in IOCTLS if isinstance(uapi.IOCTL_ARG.get(c), type)]
_ANY_CMDS = IOCTLS + UNKNOWN_IOCTLS
_S = ctypes.sizeof


def _name(cmd: int) -> str:
    return uapi.IOCTL_NAMES.get(cmd & 0xFFFFFFFF, hex(cmd & 0xFFFFFFFF))


# ------------------------------------------------------------------------------ one input
class Session:
    """One input's world: a machine, its accelerator, the address pool, the fds and eventfds."""

    def __init__(self, src: Provider) -> None:
        self.src = src
        self.accel = NullAccelerator()
        self.machine = Machine(accel="soft")
        self.machine.runtime.set_accelerator(self.accel)
        self.files: list[HsmFile] = []
        # Every address the input makes goes through the pool's make_safe/place/safe_monitor (the
        # harness' memory safety: see AddressPool).
        self.pool = AddressPool(self.machine, self.files)
        self.eventfds: list[int] = []
        self.other_fd = -1
        self.ops: list[tuple[str, Callable[[], None]]] = [(n, getattr(self, f"op_{n}")) for n in OP_NAMES]

    # ------------------------------------------------------------------ reading the input
    def u(self, size: int) -> int:
        return int(self.src.ConsumeUInt(size))

    def pick(self, seq: Sequence[Any]) -> Any:
        return seq[self.u(1) % len(seq)]

    def pick_or_u64(self, seq: Sequence[int]) -> int:
        """One of ``seq``, or (selector == len(seq)) any 64-bit value read next."""
        k = self.u(1) % (len(seq) + 1)
        return self.u(8) if k == len(seq) else seq[k]

    def blob(self, max_len: int) -> bytes:
        return bytes(self.src.ConsumeBytes(self.u(2) % (max_len + 1)))

    def live(self) -> list[HsmFile]:
        return [f for f in self.files if not f.closed]

    def fd(self) -> HsmFile:
        """An open fd chosen by the input: one u8 selector (none read, and one opened, if none is open)."""
        live = self.live()
        if not live:
            return self._open()
        return live[self.u(1) % len(live)]

    # ------------------------------------------------------------------ the checked call
    def ioctl(self, f: HsmFile, cmd: int, arg: object) -> int | None:
        """One ioctl: its result, or None when refused with an errno docs/ioctls.md allows for it."""
        cmd32 = cmd & 0xFFFFFFFF
        if cmd32 == uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT and self._attach_blocks(f):
            return self.blocking_attach(f, cmd, arg)
        return self._checked(f, cmd, arg)

    def _checked(self, f: HsmFile, cmd: int, arg: object, racing_close: bool = False) -> int | None:
        cmd32 = cmd & 0xFFFFFFFF
        arg = self.pool.make_safe(cmd32, arg)
        has_vm = f.vm.valid
        STATS.ioctls += 1
        STATS.tried.add(cmd32)
        try:
            ret = f.ioctl(cmd, arg)
        except OSError as e:
            ok = allowed(cmd32, has_vm)
            if racing_close:
                # The fd may be closed (EBADF) or lose its VM (EINVAL) before this call enters.
                ok = ok | allowed(cmd32, False) | {errno.EBADF}
            if e.errno not in ok:
                raise Finding(
                    f"{_name(cmd32)}: errno {errno.errorcode.get(e.errno or 0, e.errno)} not in "
                    f"{sorted(errno.errorcode.get(x, str(x)) for x in ok)}"
                ) from e
            STATS.refused += 1
            code = errno.errorcode.get(e.errno or 0, str(e.errno))
            STATS.errnos[code] += 1
            STATS.refusals[_name(cmd32), code] += 1
            return None
        if not isinstance(ret, int) or ret < 0:
            raise Finding(f"{_name(cmd32)} returned {ret!r}")
        STATS.succeeded[_name(cmd32)] += 1
        return ret

    def arg_form(self, cmd: int, data: bytes, size: int) -> object:
        """The same bytes as a buffer, short, immutable, a raw pointer (good or bad), or a value.

        Bytes: [form: u8 % 8] then 0: a buffer; 1: a buffer shorter than the struct; 2: immutable
        bytes; 3, 4: a pointer from AddressPool.pick (selector u8, offset u16) holding the bytes;
        5: AddressPool.bad[u8] (NULL, PROT_NONE, read-only, non-canonical, kernel); 6: any u64; 7: 0.
        """
        form = self.u(1) % 8
        if form == 0:
            return bytearray(data)
        if form == 1:
            return bytearray(data[: max(0, size - 1 - len(data) % 7)])  # shorter than the struct
        if form == 2:
            return bytes(data)  # immutable: a temporary copy, never written back
        if form in (3, 4):
            return self.pool.place(cmd, data.ljust(size, b"\0"), self.pool.pick(self.u(1), self.u(2)))
        if form == 5:
            return self.pool.bad[self.u(1) % len(self.pool.bad)]
        if form == 6:
            return self.u(8)  # any integer: a by-value argument, or a pointer nobody mapped
        return 0

    # ------------------------------------------------------------------ operations
    def _open(self) -> HsmFile:
        f = self.machine.open()
        self.files.append(f)
        return f

    def op_open(self) -> None:
        if len(self.live()) < MAX_FDS:
            self._open()

    def op_close(self) -> None:
        live = self.live()
        if not live:
            return
        f = live[self.u(1) % len(live)]
        f.release()
        try:
            f.ioctl(uapi.ACRN_IOCTL_PAUSE_VM, 0)
        except OSError as e:
            if e.errno != errno.EBADF:
                raise Finding(f"ioctl on a closed fd: errno {e.errno}, not EBADF") from e
        else:
            raise Finding("ioctl on a closed fd succeeded")

    def op_create_vm(self) -> None:
        """CREATE_VM with a random ioreq_buf (any pool address, misaligned), fields and form."""
        f = self.fd()
        req = uapi.acrn_vm_creation()
        ctypes.memmove(req.uuid.b, self.pick(_NAMES).ljust(16, b"\0"), 16)
        reserved = self.pick([0, 0, 0, 1, 0x10000])
        req.reserved0, req.reserved1 = reserved & 0xFFFF, reserved >> 16
        req.cpu_affinity = self.pick_or_u64([0, 0, 0b10, 0b1110, 0b1_0000, 1 << 63])
        req.vm_flag = self.pick([0, 0, uapi.GUEST_FLAG_IO_COMPLETION_POLLING, 1 << 1, U64])
        req.ioreq_buf = self.pool.pick(self.u(1), self.u(2))
        self.ioctl(
            f, uapi.ACRN_IOCTL_CREATE_VM, self.arg_form(uapi.ACRN_IOCTL_CREATE_VM, bytes(req), _S(req))
        )

    def op_open_vm(self) -> None:
        """A well-formed CREATE_VM, one page of RAM and a valid register state: reaches deep states.

        Bytes: [fd: u8, only when 3 fds are open] [ioreq page: u8 (RAM is the next page)] [name: u8].
        """
        f = self._open() if len(self.live()) < MAX_FDS else self.fd()
        page = self.u(1)
        req = uapi.acrn_vm_creation()
        ctypes.memmove(req.uuid.b, self.pick(_NAMES[:5]).ljust(16, b"\0"), 16)
        req.ioreq_buf = self.pool.page(page)
        if self.ioctl(f, uapi.ACRN_IOCTL_CREATE_VM, req) is None:
            return
        m = uapi.acrn_vm_memmap(
            type=uapi.ACRN_MEMMAP_RAM, attr=uapi.ACRN_MEM_ACCESS_RWX, user_vm_pa=0, len=4096
        )
        m.vma_base = self.pool.page(page + 1)
        self.ioctl(f, uapi.ACRN_IOCTL_SET_MEMSEG, m)
        r = uapi.acrn_vcpu_regs()
        r.vcpu_regs.cr0, r.vcpu_regs.cs_ar, r.vcpu_regs.cs_limit = 0x30, 0x9F, 0xFFFF
        self.ioctl(f, uapi.ACRN_IOCTL_SET_VCPU_REGS, r)

    def op_lifecycle(self) -> None:
        f = self.fd()
        cmd = self.pick(_IO_CMDS[:4] * 3 + _IO_CMDS[4:])
        self.ioctl(f, cmd, self.u(8) if self.u(1) & 1 else 0)  # _IO: the argument is ignored

    def op_any_ioctl(self) -> None:
        """Any known or unknown command, or a raw 32-bit number, with random argument bytes.

        Bytes: [fd] [raw: u8; odd: the command is the next u32, even: a selector u8 into
        IOCTLS + UNKNOWN_IOCTLS] [length: u16 % 321] [argument bytes] [arg_form's bytes].
        """
        f = self.fd()
        cmd = self.u(4) if self.u(1) & 1 else self.pick(_ANY_CMDS)
        kind = uapi.IOCTL_ARG.get(cmd & 0xFFFFFFFF)
        size = _S(kind) if isinstance(kind, type) else 8
        data = self.blob(320)
        self.ioctl(f, cmd, self.arg_form(cmd & 0xFFFFFFFF, data, size))

    def op_set_vcpu_regs(self) -> None:
        f = self.fd()
        r = uapi.acrn_vcpu_regs()
        r.vcpu_id = self.pick([0, 1, 2, 3, 5, 0xFFFF])
        r.reserved[0] = self.pick([0, 0, 0, 1])
        r.vcpu_regs.cr0 = self.pick([0x30, 0x31, 0x80000031, 0, 0x20, 1 << 40])
        r.vcpu_regs.cr4 = self.pick([0, 0x20, 0x2000, 1 << 23])
        r.vcpu_regs.ia32_efer = self.pick([0, 0x500, 0x100])
        r.vcpu_regs.rflags = self.pick([0, 2, 0x200, U64])
        r.vcpu_regs.cs_ar = self.pick([0xC09B, 0x9F, 0, 0xFFFF])
        r.vcpu_regs.cs_limit = self.pick([0xFFFFFFFF, 0xFFFF, 0])
        data = bytearray(bytes(r))
        # A few random bytes anywhere in the struct (reserved fields included).
        for _ in range(self.u(1) % 4):
            data[self.u(2) % len(data)] = self.u(1)
        self.ioctl(
            f, uapi.ACRN_IOCTL_SET_VCPU_REGS, self.arg_form(uapi.ACRN_IOCTL_SET_VCPU_REGS, bytes(data), _S(r))
        )

    def op_memseg(self) -> None:
        """SET_MEMSEG/UNSET_MEMSEG with a random vma_base (unmapped, read-only, kernel, misaligned).

        Bytes: [fd] [type: u8] [attr: u8] [user_vm_pa: u8 (+u64)] [pages: u8] [len tail: u8]
        [vma mode: u8; % 4 != 0: pool selector u8 + offset u16 (AddressPool.pick), else any u64]
        [unset: u8, UNSET_MEMSEG when % 4 == 0].
        """
        f = self.fd()
        m = uapi.acrn_vm_memmap(
            type=self.pick([0, 0, 1, 2, 0xFFFFFFFF]),
            attr=self.pick([uapi.ACRN_MEM_ACCESS_RWX, 0, 0x7C7, 0xFFFFFFFF]),
            user_vm_pa=self.pick_or_u64([0, 0x1000, 0x100000, 0xFED00000, 1 << 63]),
            len=(self.pick([0, 1, 2, 3, 100, 1 << 52]) * 4096 + self.pick([0, 0, 1, 4095])) & U64,
        )
        m.vma_base = self.pool.pick(self.u(1), self.u(2)) if self.u(1) % 4 else self.u(8)
        cmd = uapi.ACRN_IOCTL_UNSET_MEMSEG if self.u(1) % 4 == 0 else uapi.ACRN_IOCTL_SET_MEMSEG
        self.ioctl(f, cmd, bytearray(bytes(m)))

    def op_intr_monitor(self) -> None:
        """VM_INTR_MONITOR: the page (any pool address) carries a command word and a count."""
        f = self.fd()
        addr = self.pool.safe_monitor(self.pool.pick(self.u(1), self.u(2)))
        if self.pool.in_scratch(addr & PAGE_MASK, PAGE):
            word = self.u(1) % 4 | (self.u(1) % 21 * 3) << 32
            ctypes.memmove(addr & PAGE_MASK, word.to_bytes(8, "little"), 8)
        self.ioctl(f, uapi.ACRN_IOCTL_VM_INTR_MONITOR, addr)

    def op_set_irqline(self) -> None:
        f = self.fd()
        value = self.u(8) if self.u(1) & 1 else uapi.irqline_value(self.u(1) % 60, self.u(1) % 6)
        self.ioctl(f, uapi.ACRN_IOCTL_SET_IRQLINE, value)

    def op_notify(self) -> None:
        f = self.fd()
        n = uapi.acrn_ioreq_notify(
            vmid=0xFFFF, reserved=self.pick([0, 0, 1]), vcpu=self.pick([0, 1, 2, 3, 16, 0x10000, 0xFFFFFFFF])
        )
        self.ioctl(f, uapi.ACRN_IOCTL_NOTIFY_REQUEST_FINISH, n)

    def op_pm_get_cpu_state(self) -> None:
        f = self.fd()
        size = self.pick([8, 32, 48, 4])
        buf = bytearray(size)
        cmd = uapi.pm_cmd(self.u(1) % 20, self.u(1) % 6, self.u(1) % 5, self.u(1) % 6)
        buf[: min(8, size)] = cmd.to_bytes(8, "little")[: min(8, size)]
        self.ioctl(f, uapi.ACRN_IOCTL_PM_GET_CPU_STATE, buf)

    def _eventfd(self) -> int:
        """An eventfd of ours (0, 1), an fd that is not an eventfd (2), or a closed fd number (3)."""
        which = self.u(1) % 4
        if which < 2:
            while len(self.eventfds) <= which:
                self.eventfds.append(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
            return self.eventfds[which]
        if which == 2:
            if self.other_fd < 0:
                self.other_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            return self.other_fd
        return 1 << 20  # above any fd in use

    def op_ioeventfd(self) -> None:
        f = self.fd()
        a = uapi.acrn_ioeventfd(
            fd=self._eventfd(),
            flags=self.u(1) % 16,
            addr=self.pick([0x80, 0xCF8, 0xCFC, 0xFED00000, U64 - 1]),
            len=self.pick([0, 1, 2, 4, 8, 3]),
            data=self.u(1) % 4,
        )
        a.reserved = self.pick([0, 0, 0, 1])
        self.ioctl(f, uapi.ACRN_IOCTL_IOEVENTFD, a)

    def op_irqfd(self) -> None:
        f = self.fd()
        fd = self._eventfd()
        if self.u(1) & 1 and fd in self.eventfds:
            os.eventfd_write(fd, 1)
        a = uapi.acrn_irqfd(fd=fd, flags=self.u(1) % 4)
        a.msi.msi_addr, a.msi.msi_data = 0xFEE00000, 0x30
        self.ioctl(f, uapi.ACRN_IOCTL_IRQFD, a)

    def op_guest_io(self) -> None:
        """What a RUNNING vCPU's I/O exit does: acrn_insert_request and the upcall."""
        f = self.fd()
        vcpu, port, write = self.u(1) % 4, self.pick([0x3F8, 0x80, 0xCF8, 0xCFC]), self.u(1) & 1
        vm = self.machine.hv.vm(f.vm.vmid) if f.vm.valid else None
        if vm is None or vm.state != VmState.RUNNING or vm.vcpu(vcpu) is None:
            return
        direction = uapi.ACRN_IOREQ_DIR_WRITE if write else uapi.ACRN_IOREQ_DIR_READ
        rc = self.machine.hv.insert_request(
            vm.vmid, vcpu, uapi.ACRN_IOREQ_TYPE_PORTIO, direction=direction, address=port, size=4, value=7
        )
        if rc not in (0, -errno.EINVAL):
            raise Finding(f"insert_request returned {rc}")

    def op_guest_complete(self) -> None:
        """The vCPU's post-work after its wait (dm_emulate_io_complete): frees a COMPLETE slot."""
        f = self.fd()
        vcpu = self.u(1) % 4
        if f.vm.valid:
            self.machine.hv.complete_request(f.vm.vmid, vcpu)

    def op_attach(self) -> None:
        self.ioctl(self.fd(), uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT, 0)

    @staticmethod
    def _attach_blocks(f: HsmFile) -> bool:
        """ATTACH waits unless there is no default client or a request is already pending for it."""
        client = f.vm.default_client
        return f.vm.valid and client is not None and not client.pending and not client.destroying

    def blocking_attach(self, f: HsmFile, cmd: int, arg: object) -> int | None:
        """An ATTACH that would block, run on a thread and released by the input.

        The release is DESTROY_IOREQ_CLIENT or closing the fd (both wake the waiter with -ENODEV,
        acrn_ioreq_client_destroy, acrn_vm_destroy), never a timed signal, so the outcome does not depend
        on scheduling: a waiter that had not entered yet finds no client (ENODEV), a closed fd (EBADF) or
        no VM.
        """
        result: list[int | None] = []
        failure: list[BaseException] = []

        def waiter() -> None:
            try:
                result.append(self._checked(f, cmd, arg, racing_close=True))
            except BaseException as e:  # re-raised on the fuzzing thread
                failure.append(e)

        t = threading.Thread(target=waiter, name="atheris-attach")
        t.start()
        if self.u(1) & 1:
            f.release()
        else:
            self._checked(f, uapi.ACRN_IOCTL_DESTROY_IOREQ_CLIENT, 0)
        t.join(ATTACH_TIMEOUT)
        if t.is_alive():
            raise Finding("ATTACH_IOREQ_CLIENT still blocked after its client was destroyed")
        if failure:
            raise failure[0]
        return result[0]

    # ------------------------------------------------------------------ driving
    def run(self) -> None:
        for _ in range(MAX_OPS):
            if self.src.remaining_bytes() == 0:
                break
            name, op = self.ops[self.u(1) % len(self.ops)]
            STATS.ops[name] += 1
            op()
            check_invariants(self.machine, self.files, self.accel)

    def close(self) -> None:
        """Close every fd; then nothing may be left (acrn_dev_release, acrn_vm_destroy)."""
        try:
            for f in self.files:
                f.release()
            check_released(self.machine, self.accel)
        finally:
            for fd in self.eventfds:
                os.close(fd)
            self.eventfds.clear()
            if self.other_fd >= 0:
                os.close(self.other_fd)
                self.other_fd = -1
            self.pool.close()
            self.machine.runtime.close()


def one_input(data: bytes) -> None:
    """Run one input; raises on any finding (atheris reports it as a crash with the input)."""
    fds_before = open_fds()
    threads_before = threading.active_count()
    STATS.inputs += 1
    session = Session(provider(data))
    try:
        session.run()
    finally:
        session.close()
    if threading.active_count() > threads_before:
        raise Finding(f"threads leaked: {[t.name for t in threading.enumerate()]}")
    leaked = open_fds() - fds_before
    if leaked:
        raise Finding(f"fds leaked: {sorted(leaked)}")


# ------------------------------------------------------------------------------ libFuzzer entry
_exit_hook: object = None


def _print_stats_at_exit() -> None:
    """libFuzzer ends the process with C exit(), which skips Python's atexit: hook glibc's on_exit."""
    global _exit_hook

    def report(status: int, arg: object) -> None:
        print(STATS.summary(), flush=True)

    hook = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p)(report)
    try:
        ctypes.CDLL(None).on_exit(hook, None)
    except AttributeError:  # not glibc: Python's atexit at least covers a normal return
        import atexit

        atexit.register(lambda: print(STATS.summary(), flush=True))
        return
    _exit_hook = hook  # the C callback must outlive the interpreter's use of it


def instrument_acrn() -> int:
    """Add atheris' coverage instrumentation to every loaded function of the ``acrn`` package.

    acrn is imported before main() runs (this module needs it), too late for
    ``atheris.instrument_imports``; ``atheris.instrument_all`` would work but also patches the whole
    standard library (about 13 s here).  This patches the emulator's code in place, in well under
    a second, which is what should guide the mutations.
    """
    n = 0
    for obj in gc.get_objects():
        if (
            isinstance(obj, types.FunctionType)
            and (obj.__module__ or "").partition(".")[0] == "acrn"
            and obj.__module__ in sys.modules
        ):
            atheris.instrument_func(obj)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    """``python tests/fuzz/atheris_hsm.py [libFuzzer flags] [corpus_dir]``."""
    argv = list(sys.argv if argv is None else argv)
    if atheris is None:
        print(f"atheris is not installed; to fuzz the HSM with it: {PIP_INSTALL}", file=sys.stderr)
        return 2
    print(f"atheris_hsm: instrumented {instrument_acrn()} functions of acrn", file=sys.stderr)
    # Refusals are the expected answers here (the histogram counts them); the emulator's log of
    # each one would bury libFuzzer's status lines and slow every input.
    logging.getLogger("acrn").setLevel(logging.CRITICAL)
    _print_stats_at_exit()
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
