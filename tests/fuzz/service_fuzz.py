"""Fuzzing the hypervisor service's socket protocol (issue 15): the HSM ioctls as a C client sends
them, and raw datagrams as no client should.

One input is a program of operations (read as ``atheris_hsm.py`` reads its inputs) against one
``acrn hv`` service in this process (``HvService`` on a temporary socket, vCPUs on the harness'
:class:`~harness.NullAccelerator`):

* ``ioctl``: any ioctl of ``harness.IOCTLS`` or an unknown type-0xA2 command, through
  :class:`acrn.service.client.ServiceDevice`, i.e. through the preload library (ctypes) exactly as
  ``acrn exec`` forwards a C program's ioctls.  The argument is random bytes at a struct page, or a
  bad pointer (NULL, PROT_NONE, read-only, kernel, non-canonical), or a value; the user addresses
  the driver pins (ioreq_buf, vma_base, the monitor page) are always one of the fuzzer's own pages
  or a bad address, so that the hypervisor writes nowhere but there.  The result must be a
  non-negative int or an errno ``harness.allowed`` permits (with or without a VM: the driver does
  not track which fd holds one); EIO, the library's "the service failed", is never allowed.
* ``attach``: ATTACH_IOREQ_CLIENT on a thread of its own; when it blocks, DESTROY_IOREQ_CLIENT (or
  the file's release) must end it.
* ``raw``: a raw connection (``service_wire.py``) sending a mutated request, control message or
  hello, with random fds attached: the service answers with a well-formed reply, or hangs up.
* ``open``/``close`` of devices and raw connections at any point.

After every operation the harness' ``check_invariants`` holds for the service's open files.  At
the end every device and connection is closed; the service must release every file, and then
``harness.check_released`` holds and no fd or thread is left behind; the service must still
answer.

The ServiceDevice path loads the preload library into this process, which serves one socket path
per process: the service of every input listens on the same path (:func:`socket_path`).

Run as a script it is a libFuzzer target (``python tests/fuzz/service_fuzz.py -runs=10000
-max_len=512``), with atheris installed.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from acrn import uapi
from acrn.emu.machine import Machine
from acrn.service import protocol
from acrn.service.client import ServiceDevice
from acrn.service.server import HvService

try:
    from .atheris_hsm import Finding, Provider, provider
    from .harness import IOCTLS, UNKNOWN_IOCTLS, NullAccelerator, allowed, check_invariants, check_released
    from .service_wire import MEM_SIZE, REP_SIZE, add_channel, ctl_bytes, hello_bytes, open_file
except ImportError:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fuzz.atheris_hsm import Finding, Provider, provider
    from fuzz.harness import (
        IOCTLS,
        UNKNOWN_IOCTLS,
        NullAccelerator,
        allowed,
        check_invariants,
        check_released,
    )
    from fuzz.service_wire import MEM_SIZE, REP_SIZE, add_channel, ctl_bytes, hello_bytes, open_file

PAGE = mmap.PAGESIZE
MAX_OPS = 64
MAX_DEVICES = 3
MAX_RAW = 2
#: The commands the preload library forwards (type 0xA2), known and unknown.
COMMANDS = IOCTLS + [c for c in UNKNOWN_IOCTLS if (c >> 8) & 0xFF == uapi.ACRN_IOCTL_TYPE]
_ADDR_FIELDS = {  # where the pinned user address sits in the struct
    uapi.ACRN_IOCTL_CREATE_VM: uapi.acrn_vm_creation.ioreq_buf.offset,
    uapi.ACRN_IOCTL_SET_MEMSEG: uapi.acrn_vm_memmap.vma_base.offset,
}
_MEM_LEN = uapi.acrn_vm_memmap.len.offset
_FD_FIELD = (uapi.ACRN_IOCTL_IOEVENTFD, uapi.ACRN_IOCTL_IRQFD)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


@dataclass
class Stats:
    inputs: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    ioctls: int = 0
    results: Counter[str] = field(default_factory=Counter)
    raw_replies: int = 0
    raw_hangups: int = 0

    def summary(self) -> str:
        top = ", ".join(f"{k} {v}" for k, v in self.results.most_common(8))
        return (
            f"service fuzz: {self.inputs} inputs, {sum(self.ops.values())} operations, {self.ioctls} ioctls "
            f"through the preload library ({top}); raw messages: {self.raw_replies} answered, "
            f"{self.raw_hangups} hung up on"
        )


STATS = Stats()


def socket_path() -> str:
    """This process's service socket (the preload library serves one path per process)."""
    d = os.path.join(tempfile.gettempdir(), f"pyacrn-svcfuzz-{os.getpid()}")
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, "hv.sock")


class Memory:
    """The fuzzer's pages: ioreq/monitor pages and RAM the driver pins, struct pages the library
    reads and writes back, and pages that fault.  Nothing else of this process is ever named."""

    PINNED = 8
    STRUCTS = 4

    def __init__(self) -> None:
        self.area = mmap.mmap(-1, (self.PINNED + self.STRUCTS + 2) * PAGE)
        view = ctypes.c_char.from_buffer(self.area)
        self.base = ctypes.addressof(view)
        del view
        self.pinned = self.base
        self.structs = self.base + self.PINNED * PAGE
        self.none_page = self.structs + self.STRUCTS * PAGE
        self.ro_page = self.none_page + PAGE
        _libc.mprotect(self.none_page, PAGE, 0)
        _libc.mprotect(self.ro_page, PAGE, mmap.PROT_READ)
        self.bad = [0, 8, self.none_page, self.ro_page, 0x0000_8000_0000_0000, 0xFFFF_8000_0000_0000]

    def pinned_address(self, sel: int, offset: int, *, ioreq: bool = False) -> int:
        """An ioreq page (the first half: only the hypervisor writes them, so their slot states
        stay legal) or a monitor/RAM page (the second half), or a bad address."""
        half = self.PINNED // 2
        k = sel % (half + len(self.bad))
        if k < half:
            page = self.pinned + (k if ioreq else half + k) * PAGE
            return page + (offset % PAGE if offset % 3 == 0 else 0)
        return self.bad[k - half]

    def struct_pointer(self, sel: int) -> int:
        k = sel % (self.STRUCTS + len(self.bad))
        if k < self.STRUCTS:
            return self.structs + k * PAGE
        return self.bad[k - self.STRUCTS]

    def close(self) -> None:
        _libc.mprotect(self.none_page, 2 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
        self.area.close()


class World:
    """The service the inputs run against, started once per process (inputs share its socket)."""

    def __init__(self) -> None:
        self.accel = NullAccelerator()
        self.machine = Machine(accel="soft")
        self.machine.runtime.set_accelerator(self.accel)  # type: ignore[arg-type]
        self.service = HvService(self.machine, socket_path())
        self.service.start()
        self.memory = Memory()

    def close(self) -> None:
        self.service.stop()
        self.machine.runtime.close()
        self.memory.close()
        d = os.path.dirname(self.service.path)
        if os.path.isdir(d):
            os.rmdir(d)


_world: World | None = None


def world() -> World:
    global _world
    if _world is None:
        _world = World()
    return _world


def close_world() -> None:
    global _world
    if _world is not None:
        _world.close()
        _world = None


class Session:
    def __init__(self, src: Provider, w: World) -> None:
        self.src = src
        self.w = w
        self.mem = w.memory
        self.devices: list[ServiceDevice] = []
        self.raw: list[tuple[socket.socket, socket.socket]] = []
        self.eventfd = os.eventfd(0, os.EFD_CLOEXEC)
        self.ops: list[tuple[str, Callable[[], None]]] = [
            ("open", self.op_open),
            ("close", self.op_close),
            ("ioctl", self.op_ioctl),
            ("ioctl", self.op_ioctl),
            ("ioctl", self.op_ioctl),
            ("open_vm", self.op_open_vm),
            ("lifecycle", self.op_lifecycle),
            ("lifecycle", self.op_lifecycle),
            ("attach", self.op_attach),
            ("raw_open", self.op_raw_open),
            ("raw_request", self.op_raw_request),
            ("raw_main", self.op_raw_main),
            ("raw_close", self.op_raw_close),
        ]

    def u(self, size: int) -> int:
        return int(self.src.ConsumeUInt(size))

    def device(self) -> ServiceDevice:
        if not self.devices:
            self.op_open()
        return self.devices[self.u(1) % len(self.devices)]

    # ------------------------------------------------------------------ the preload library
    def op_open(self) -> None:
        if len(self.devices) < MAX_DEVICES:
            self.devices.append(ServiceDevice(self.w.service.path))

    def op_close(self) -> None:
        if self.devices:
            self.devices.pop(self.u(1) % len(self.devices)).close()

    def ioctl(self, dev: ServiceDevice, cmd: int, arg: int) -> int | None:
        STATS.ioctls += 1
        name = uapi.IOCTL_NAMES.get(cmd, hex(cmd))
        try:
            ret = dev._ioctl(cmd, arg)
        except OSError as e:
            ok = allowed(cmd, True) | allowed(cmd, False)
            code = errno.errorcode.get(e.errno or 0, str(e.errno))
            if e.errno not in ok:
                raise Finding(f"{name} through the service: errno {code} not in {sorted(ok)}") from e
            STATS.results[code] += 1
            return None
        if ret < 0:
            raise Finding(f"{name} returned {ret}")
        STATS.results["ok"] += 1
        return ret

    def op_ioctl(self) -> None:
        dev = self.device()
        cmd = COMMANDS[self.u(1) % len(COMMANDS)]
        if cmd == uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT:
            self.attach(dev)  # it may block: on a thread of its own
            return
        kind = uapi.IOCTL_ARG.get(cmd)
        form = self.u(1) % 4
        if cmd == uapi.ACRN_IOCTL_VM_INTR_MONITOR:
            arg = self.mem.pinned_address(self.u(1), self.u(2))
        elif isinstance(kind, type) or kind == "u64ptr":
            size = ctypes.sizeof(kind) if isinstance(kind, type) else 8
            data = bytearray(self.src.ConsumeBytes(self.u(2) % (size + 1)).ljust(size, b"\0"))
            if cmd in _ADDR_FIELDS:
                at = _ADDR_FIELDS[cmd]
                addr = self.mem.pinned_address(self.u(1), self.u(2), ioreq=cmd == uapi.ACRN_IOCTL_CREATE_VM)
                data[at : at + 8] = addr.to_bytes(8, "little")
                if cmd == uapi.ACRN_IOCTL_SET_MEMSEG:  # a length that stays in the RAM pages
                    length = (self.u(1) % 3) * PAGE + self.u(1) % 2
                    data[_MEM_LEN : _MEM_LEN + 8] = length.to_bytes(8, "little")
            if cmd in _FD_FIELD:
                fds = [self.eventfd, -1, 999_999, dev.fd or -1]
                data[0:4] = (fds[self.u(1) % len(fds)] & 0xFFFFFFFF).to_bytes(4, "little")
            if form == 3:
                arg = self.mem.bad[self.u(1) % len(self.mem.bad)]
            else:
                arg = self.mem.struct_pointer(self.u(1) % Memory.STRUCTS)
                # Short: the struct runs into the PROT_NONE page after the last struct page.
                if form == 2:
                    arg = self.mem.none_page - len(data) // 2
                    data = data[: len(data) // 2]
                ctypes.memmove(arg, bytes(data), len(data))
        else:
            arg = self.u(8) if form == 0 else 0
        self.ioctl(dev, cmd, arg)

    def op_open_vm(self) -> None:
        """A well-formed CREATE_VM, RAM, registers and an ioreq client, so later steps reach deep
        states (random struct bytes rarely make a VM)."""
        dev = self.device()
        vm = uapi.acrn_vm_creation()
        ctypes.memmove(vm.uuid.b, [b"", b"svc-a", b"svc-b"][self.u(1) % 3].ljust(16, b"\0"), 16)
        vm.ioreq_buf = self.mem.pinned_address(self.u(1) % 4, 0, ioreq=True)
        at = self.mem.struct_pointer(0)
        ctypes.memmove(at, bytes(vm), ctypes.sizeof(vm))
        if self.ioctl(dev, uapi.ACRN_IOCTL_CREATE_VM, at) is None:
            return
        m = uapi.acrn_vm_memmap(
            type=uapi.ACRN_MEMMAP_RAM, attr=uapi.ACRN_MEM_ACCESS_RWX, user_vm_pa=0, len=PAGE
        )
        m.vma_base = self.mem.pinned_address(self.u(1) % 4, 0)
        ctypes.memmove(at, bytes(m), ctypes.sizeof(m))
        self.ioctl(dev, uapi.ACRN_IOCTL_SET_MEMSEG, at)
        r = uapi.acrn_vcpu_regs()
        r.vcpu_regs.cr0, r.vcpu_regs.cs_ar, r.vcpu_regs.cs_limit = 0x30, 0x9F, 0xFFFF
        ctypes.memmove(at, bytes(r), ctypes.sizeof(r))
        self.ioctl(dev, uapi.ACRN_IOCTL_SET_VCPU_REGS, at)
        self.ioctl(dev, uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0)

    def op_lifecycle(self) -> None:
        cmds = [
            uapi.ACRN_IOCTL_START_VM,
            uapi.ACRN_IOCTL_PAUSE_VM,
            uapi.ACRN_IOCTL_RESET_VM,
            uapi.ACRN_IOCTL_DESTROY_VM,
            uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT,
            uapi.ACRN_IOCTL_DESTROY_IOREQ_CLIENT,
            uapi.ACRN_IOCTL_CLEAR_VM_IOREQ,
        ]
        self.ioctl(self.device(), cmds[self.u(1) % len(cmds)], 0)

    def op_attach(self) -> None:
        self.attach(self.device())

    def attach(self, dev: ServiceDevice) -> None:
        STATS.ioctls += 1
        result: list[object] = []

        def waiter() -> None:
            try:
                result.append(dev._ioctl(uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT, 0))
            except OSError as e:
                result.append(e)

        t = threading.Thread(target=waiter, name="svcfuzz-attach")
        t.start()
        t.join(0.05)
        if t.is_alive():
            # Blocked: DESTROY_IOREQ_CLIENT wakes it (acrn_ioreq_client_destroy).
            self.ioctl(dev, uapi.ACRN_IOCTL_DESTROY_IOREQ_CLIENT, 0)
            t.join(10)
            if t.is_alive():
                raise Finding("ATTACH through the service still blocked after DESTROY_IOREQ_CLIENT")
        r = result[0]
        if isinstance(r, OSError) and r.errno not in allowed(uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT, True) | {
            errno.EINVAL
        }:
            raise Finding(f"ATTACH through the service: {r}")

    # ------------------------------------------------------------------ raw messages
    def op_raw_open(self) -> None:
        if len(self.raw) < MAX_RAW:
            main = open_file(self.w.service.path)
            ch, _ = add_channel(main)
            self.raw.append((main, ch))

    def _fds(self) -> list[int]:
        n = self.u(1) % 4
        kinds = [lambda: os.memfd_create("svcfuzz", os.MFD_CLOEXEC), lambda: os.dup(self.eventfd), os.pipe]
        fds: list[int] = []
        for _ in range(n):
            made = kinds[self.u(1) % len(kinds)]()
            fds.extend(made if isinstance(made, tuple) else [made])
        return fds

    def op_raw_request(self) -> None:
        if not self.raw:
            self.op_raw_open()
        main, ch = self.raw[self.u(1) % len(self.raw)]
        cmd = COMMANDS[self.u(1) % len(COMMANDS)]
        flags = self.u(1) & 0x3F
        nmem = self.u(1) % (protocol.MAX_MEM + 2)
        mems = self.src.ConsumeBytes(min(nmem, protocol.MAX_MEM) * MEM_SIZE)
        arg = self.src.ConsumeBytes(self.u(2) % 200)
        hdr = protocol.acrn_svc_req(
            protocol.REQ_MAGIC if self.u(1) % 8 else self.u(4),
            cmd,
            self.u(8),
            1,
            len(arg),
            flags,
            nmem,
            self.u(1) - 128,
        )
        data = bytes(hdr) + mems + arg
        if self.u(1) % 4 == 0:  # a length that lies
            data = data[: self.u(2) % (len(data) + 1)]
        self._send_checked(ch, data, lambda: self.raw.remove((main, ch)), main)

    def op_raw_main(self) -> None:
        if not self.raw:
            self.op_raw_open()
        main, _ = self.raw[self.u(1) % len(self.raw)]
        choices = [
            ctl_bytes(protocol.CTL_CANCEL, self.u(4), self.u(8)),
            ctl_bytes(self.u(4)),
            hello_bytes(),
            self.src.ConsumeBytes(self.u(1)),
        ]
        data = choices[self.u(1) % len(choices)]
        fds = self._fds()
        try:
            socket.send_fds(main, [data], fds)
        except OSError:
            pass
        finally:
            for fd in fds:
                os.close(fd)

    def _send_checked(
        self, ch: socket.socket, data: bytes, forget: Callable[[], None], main: socket.socket
    ) -> None:
        fds = self._fds()
        try:
            socket.send_fds(ch, [data], fds)
        except OSError:
            forget()
            main.close()
            ch.close()
            STATS.raw_hangups += 1
            return
        finally:
            for fd in fds:
                os.close(fd)
        ch.settimeout(10)
        try:
            rep = ch.recv(REP_SIZE + protocol.MAX_ARG + 1)
        except (ConnectionResetError, BrokenPipeError):
            rep = b""
        except TimeoutError:
            raise Finding("a raw request got neither a reply nor a hangup within 10 s") from None
        if not rep:
            STATS.raw_hangups += 1
            forget()
            main.close()
            ch.close()
            return
        r = protocol.acrn_svc_rep.from_buffer_copy(rep.ljust(REP_SIZE, b"\0"))
        if len(rep) < REP_SIZE or r.magic != protocol.REP_MAGIC or r.out_len != len(rep) - REP_SIZE:
            raise Finding(f"malformed reply {rep[:32].hex()}")
        if r.ret < -4095 or r.ret == -errno.EIO:
            raise Finding(f"raw request answered {r.ret}")
        STATS.raw_replies += 1

    def op_raw_close(self) -> None:
        if self.raw:
            main, ch = self.raw.pop(self.u(1) % len(self.raw))
            main.close()
            ch.close()

    # ------------------------------------------------------------------ driving
    def check(self) -> None:
        """The harness' invariants over the service's open files.  A file a raw message made the
        service release goes away on its own thread: a failure is retried until that settles."""
        deadline = time.monotonic() + 5
        while True:
            with self.w.service._lock:
                files = [f.hsm for f in self.w.service.files if not f.released]
            try:
                check_invariants(self.machine, files)
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @property
    def machine(self) -> Machine:
        return self.w.machine

    def run(self) -> None:
        for _ in range(MAX_OPS):
            if self.src.remaining_bytes() == 0:
                break
            name, op = self.ops[self.u(1) % len(self.ops)]
            STATS.ops[name] += 1
            op()
            self.check()

    def close(self) -> None:
        for dev in self.devices:
            dev.close()
        for main, ch in self.raw:
            main.close()
            ch.close()
        os.close(self.eventfd)
        deadline = time.monotonic() + 20
        while self.w.service.files:
            if time.monotonic() > deadline:
                raise Finding(
                    f"the service kept {len(self.w.service.files)} file(s) after every client closed"
                )
            time.sleep(0.005)
        check_released(self.w.machine, self.w.accel)


def _service_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("acrn-hv-") and t.name != "acrn-hv-accept"}


def one_input(data: bytes) -> None:
    """Run one input against this process's service; raises :class:`Finding` on any finding."""
    w = world()
    fds_before = set(os.listdir("/proc/self/fd"))
    STATS.inputs += 1
    session = Session(provider(data), w)
    try:
        session.run()
    finally:
        session.close()
    deadline = time.monotonic() + 10
    while _service_threads() and time.monotonic() < deadline:
        time.sleep(0.005)
    if _service_threads():
        raise Finding(f"service threads left: {sorted(t.name for t in _service_threads())}")
    # A thread's channel is closed by the library's thread-exit destructor, which may run just
    # after Thread.join returned (an ATTACH thread's): give it a moment.
    while (leaked := set(os.listdir("/proc/self/fd")) - fds_before) and time.monotonic() < deadline:
        time.sleep(0.005)
    if leaked:
        raise Finding(f"fds leaked: {sorted(leaked)}")
    s = open_file(w.service.path)  # still answering
    s.close()


def main(argv: list[str] | None = None) -> int:
    """``python tests/fuzz/service_fuzz.py [libFuzzer flags] [corpus_dir]``."""
    from fuzz.atheris_hsm import PIP_INSTALL, atheris, instrument_acrn

    argv = list(sys.argv if argv is None else argv)
    if atheris is None:
        print(f"atheris is not installed; to fuzz the service with it: {PIP_INSTALL}", file=sys.stderr)
        return 2
    print(f"service_fuzz: instrumented {instrument_acrn()} functions of acrn", file=sys.stderr)
    logging.getLogger("acrn").setLevel(logging.CRITICAL)
    import atexit

    atexit.register(lambda: print(STATS.summary(), flush=True))
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
