"""The service's wire protocol spoken from Python (``acrn.service.protocol``), for tests that must
send what a well-behaved client never would: garbage, short and oversized datagrams, lying
lengths, fds where none belong.  Shared by ``tests/service/test_service_reliability.py`` and the
socket-protocol fuzz driver (``service_fuzz.py``); also the leak snapshot both check.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from acrn.service import protocol
from acrn.service.server import HvService

REQ_SIZE = ctypes.sizeof(protocol.acrn_svc_req)
MEM_SIZE = ctypes.sizeof(protocol.acrn_svc_mem)
REP_SIZE = ctypes.sizeof(protocol.acrn_svc_rep)


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    s.connect(path)
    return s


def hello_bytes(
    kind: int = protocol.OPEN, magic: int = protocol.HELLO_MAGIC, version: int = protocol.VERSION
) -> bytes:
    return bytes(protocol.acrn_svc_hello(magic, version, kind, os.getpid(), 0))


def open_file(path: str) -> socket.socket:
    """A connection that said hello: one open file of the service's HSM."""
    s = connect(path)
    s.send(hello_bytes())
    rep = protocol.acrn_svc_hello_reply.from_buffer_copy(s.recv(64))
    assert rep.magic == protocol.HELLO_MAGIC and rep.status == 0
    return s


def ctl_bytes(op: int, channel: int = 0, seq: int = 0, magic: int = protocol.CTL_MAGIC) -> bytes:
    return bytes(protocol.acrn_svc_ctl(magic, op, channel, 0, seq))


def add_channel(main: socket.socket) -> tuple[socket.socket, int]:
    """Register a channel (a socketpair end sent with SCM_RIGHTS); the service's hello names it."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        socket.send_fds(main, [ctl_bytes(protocol.CTL_CHANNEL)], [theirs.fileno()])
    finally:
        theirs.close()
    mine.settimeout(10)
    hello = protocol.acrn_svc_channel_hello.from_buffer_copy(mine.recv(64))
    assert hello.magic == protocol.CTL_MAGIC
    return mine, hello.channel


def req_bytes(
    cmd: int,
    value: int = 0,
    *,
    seq: int = 1,
    arg: bytes = b"",
    flags: int | None = None,
    mems: Sequence[protocol.acrn_svc_mem] = (),
    fd_index: int = -1,
    nmem: int | None = None,
    arg_len: int | None = None,
    magic: int = protocol.REQ_MAGIC,
) -> bytes:
    """A request datagram; ``nmem``/``arg_len`` override the header's counts (to make them lie)."""
    if flags is None:
        flags = protocol.ARG_BUF if arg else 0
    hdr = protocol.acrn_svc_req(
        magic,
        cmd & 0xFFFFFFFF,
        value & (2**64 - 1),
        seq,
        len(arg) if arg_len is None else arg_len,
        flags,
        len(mems) if nmem is None else nmem,
        fd_index,
    )
    return bytes(hdr) + b"".join(bytes(m) for m in mems) + arg


@dataclass
class Reply:
    ret: int
    seq: int
    out: bytes


def parse_reply(data: bytes) -> Reply:
    assert len(data) >= REP_SIZE, data
    rep = protocol.acrn_svc_rep.from_buffer_copy(data)
    assert rep.magic == protocol.REP_MAGIC
    assert rep.out_len == len(data) - REP_SIZE
    return Reply(rep.ret, rep.seq, data[REP_SIZE:])


def call(chan: socket.socket, data: bytes, fds: Sequence[int] = ()) -> Reply:
    socket.send_fds(chan, [data], list(fds))
    return parse_reply(chan.recv(REP_SIZE + protocol.MAX_ARG))


def is_closed(s: socket.socket, timeout: float = 10.0) -> bool:
    """Whether the service hung up on ``s`` (EOF, or a reset) within ``timeout``."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(1 << 16):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def memfd(size: int, name: str = "svc-test") -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


# ------------------------------------------------------------------------------ leaks
def _maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


@dataclass
class Snapshot:
    """What the process hosting the service holds: fds, threads, mappings, and the hypervisor's VMs."""

    fds: set[str]
    threads: set[threading.Thread]
    maps: int
    vms: int

    @classmethod
    def take(cls, service: HvService) -> Snapshot:
        return cls(
            set(os.listdir("/proc/self/fd")),
            set(threading.enumerate()),
            _maps(),
            len(service.machine.hv.vms()),
        )


#: Mappings the interpreter may add on its own (arenas, thread stacks kept by glibc's cache).
MAPS_SLACK = 24


def settle(service: HvService, before: Snapshot, timeout: float = 20.0) -> None:
    """Wait until every open file is released and the process is back to ``before``; else fail
    with what is left.  The service must still answer (a status query)."""
    deadline = time.monotonic() + timeout
    while True:
        now = Snapshot.take(service)
        fds = now.fds - before.fds
        threads = [t.name for t in now.threads - before.threads if t.is_alive()]
        left = {
            "open files": len(service.files),
            "VMs": now.vms - before.vms,
            "fds": sorted(fds),
            "threads": sorted(threads),
        }
        if not service.files and now.vms <= before.vms and not fds and not threads:
            assert now.maps <= before.maps + MAPS_SLACK, f"mappings: {before.maps} -> {now.maps}"
            break
        if time.monotonic() > deadline:
            details = {fd: _readlink(fd) for fd in fds}
            raise AssertionError(f"the service kept resources: {left} {details}")
        time.sleep(0.02)
    assert not service.stopping
    alive = open_file(service.path)
    alive.close()
    deadline = time.monotonic() + timeout
    while service.files and time.monotonic() < deadline:
        time.sleep(0.01)


def _readlink(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, "?")
