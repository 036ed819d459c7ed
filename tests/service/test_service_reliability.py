"""The hypervisor service stays up and leaks nothing, whatever a client sends or does (issue 15).

The service runs in this process (``HvService(Machine(), path)`` on a temporary socket) and is
driven from Python with raw datagrams (``tests/fuzz/service_wire.py``).  After each scenario
``settle`` waits until every open file is released and checks that the process is back where it
was: its fds (/proc/self/fd), its threads, its mappings (/proc/self/maps, within a small slack for
the allocator) and the hypervisor's VM list; then that the service still accepts a client.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from acrn import uapi
from acrn.emu.machine import Machine
from acrn.service import protocol
from acrn.service.server import HvService

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fuzz.service_wire import (
    REQ_SIZE,
    Snapshot,
    add_channel,
    call,
    connect,
    ctl_bytes,
    hello_bytes,
    is_closed,
    memfd,
    open_file,
    req_bytes,
    settle,
)

PAGE = mmap.PAGESIZE
EFAULT, EINVAL = -14, -22


@pytest.fixture
def service() -> Iterator[HvService]:
    d = tempfile.mkdtemp(prefix="acrn-svc-")
    svc = HvService(Machine(), os.path.join(d, "hv.sock"))
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()
        svc.machine.runtime.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def before(service: HvService) -> Snapshot:
    # One client first, so that what the first connection sets up once (imports, caches) is
    # not counted as a leak.
    s = open_file(service.path)
    ch, _ = add_channel(s)
    call(ch, req_bytes(uapi.ACRN_IOCTL_PAUSE_VM))
    ch.close()
    s.close()
    deadline = time.monotonic() + 10
    while service.files and time.monotonic() < deadline:
        time.sleep(0.01)
    return Snapshot.take(service)


def create_vm(ch: socket.socket, ioreq_fd: int, *, name: bytes = b"svc-rel", seq: int = 1) -> int:
    """CREATE_VM with its ioreq page in ``ioreq_fd`` (a memfd), as the preload library sends it."""
    vm = uapi.acrn_vm_creation()
    ctypes.memmove(vm.uuid.b, name.ljust(16, b"\0"), 16)
    vm.ioreq_buf = 0x7000_0000_0000  # the client's address; the mem entry says what backs it
    mem = protocol.acrn_svc_mem(0x7000_0000_0000, PAGE, 0, mmap.PROT_READ | mmap.PROT_WRITE, 0)
    r = call(ch, req_bytes(uapi.ACRN_IOCTL_CREATE_VM, 0x1000, arg=bytes(vm), mems=[mem], seq=seq), [ioreq_fd])
    return r.ret


# ------------------------------------------------------------------------------ before the hello
_HELLO = hello_bytes()
BEFORE_HELLO: dict[str, bytes] = {
    "empty": b"",
    "one byte": b"x",
    "short": _HELLO[:-1],
    "oversized": _HELLO + bytes(4096),
    "one more byte": _HELLO + b"\0",
    "wrong magic": hello_bytes(magic=0xDEADBEEF),
    "wrong version": hello_bytes(version=99),
    "unknown kind": hello_bytes(kind=7),
    "a control message": ctl_bytes(protocol.CTL_CHANNEL),
    "a request": req_bytes(uapi.ACRN_IOCTL_PAUSE_VM),
    "64 KiB of garbage": os.urandom(1 << 16),
}


@pytest.mark.parametrize("data", BEFORE_HELLO.values(), ids=BEFORE_HELLO.keys())
def test_garbage_instead_of_the_hello_is_hung_up_on(
    service: HvService, before: Snapshot, data: bytes
) -> None:
    s = connect(service.path)
    r, w = os.pipe()
    try:
        socket.send_fds(s, [data], [r, w])  # fds attached, where none are expected either
    finally:
        os.close(r)
        os.close(w)
    assert is_closed(s)
    s.close()
    settle(service, before)


def test_a_hello_with_fds_attached_opens_and_the_fds_are_not_kept(
    service: HvService, before: Snapshot
) -> None:
    s = connect(service.path)
    fds = [memfd(PAGE) for _ in range(protocol.MAX_FDS)]
    socket.send_fds(s, [_HELLO], fds)
    for fd in fds:
        os.close(fd)
    rep = protocol.acrn_svc_hello_reply.from_buffer_copy(s.recv(64))
    assert rep.status == 0
    s.close()
    settle(service, before)


def test_a_thousand_fds_on_one_connection_are_dropped(service: HvService, before: Snapshot) -> None:
    """SCM_RIGHTS carries at most 253 fds a message: four messages of 250, before and after hello."""
    fds = [memfd(0) for _ in range(250)]
    try:
        s = connect(service.path)
        socket.send_fds(s, [_HELLO], fds)
        assert is_closed(s)  # more fds than the service takes: the message is truncated
        s.close()
        s = open_file(service.path)
        for _ in range(3):
            with pytest.raises(OSError):  # hung up on after the first
                for _ in range(3):
                    socket.send_fds(s, [ctl_bytes(protocol.CTL_CANCEL)], fds)
                    time.sleep(0.05)
        s.close()
    finally:
        for fd in fds:
            os.close(fd)
    settle(service, before)


def test_a_client_that_never_says_hello_does_not_block_others(service: HvService, before: Snapshot) -> None:
    silent = [connect(service.path) for _ in range(8)]
    s = open_file(service.path)
    ch, _ = add_channel(s)
    assert call(ch, req_bytes(uapi.ACRN_IOCTL_PAUSE_VM)).ret == EINVAL  # no VM on this file yet
    for c in (*silent, ch, s):
        c.close()
    settle(service, before)


# ------------------------------------------------------------------------------ the main socket
def _pipe_channel(main: socket.socket) -> None:
    r, w = os.pipe()
    try:
        socket.send_fds(main, [ctl_bytes(protocol.CTL_CHANNEL)], [r])
    finally:
        os.close(r)
        os.close(w)


def _stream_channel(main: socket.socket) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        socket.send_fds(main, [ctl_bytes(protocol.CTL_CHANNEL)], [b.fileno()])


def _udp_channel(main: socket.socket) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        socket.send_fds(main, [ctl_bytes(protocol.CTL_CHANNEL)], [u.fileno()])


def _two_channels(main: socket.socket) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, c, d:
        socket.send_fds(main, [ctl_bytes(protocol.CTL_CHANNEL)], [b.fileno(), d.fileno()])


def _send(data: bytes) -> Callable[[socket.socket], None]:
    return lambda main: main.sendall(data)


ON_MAIN: dict[str, Callable[[socket.socket], None]] = {
    "empty": _send(b""),
    "short": _send(ctl_bytes(protocol.CTL_CANCEL)[:-1]),
    "oversized": _send(ctl_bytes(protocol.CTL_CANCEL) + bytes(8192)),
    "wrong magic": _send(ctl_bytes(protocol.CTL_CANCEL, magic=protocol.REQ_MAGIC)),
    "unknown op": _send(ctl_bytes(77)),
    "a channel without its fd": _send(ctl_bytes(protocol.CTL_CHANNEL)),
    "a second hello": _send(_HELLO),
    "a request": _send(req_bytes(uapi.ACRN_IOCTL_PAUSE_VM)),
    "a channel that is a pipe": _pipe_channel,
    "a channel that is a stream socket": _stream_channel,
    "a channel that is a UDP socket": _udp_channel,
    "a channel with two fds": _two_channels,
}


@pytest.mark.parametrize("send", ON_MAIN.values(), ids=ON_MAIN.keys())
def test_garbage_on_the_main_socket_releases_the_file(
    service: HvService, before: Snapshot, send: Callable[[socket.socket], None]
) -> None:
    s = open_file(service.path)
    ch, _ = add_channel(s)
    fd = memfd(PAGE)
    assert create_vm(ch, fd) == 0
    os.close(fd)
    assert len(service.machine.hv.vms()) == before.vms + 1
    send(s)
    assert is_closed(s)  # the file is released: its VM with it
    assert is_closed(ch)
    s.close()
    ch.close()
    settle(service, before)


def test_cancels_that_match_nothing_are_ignored(service: HvService, before: Snapshot) -> None:
    s = open_file(service.path)
    ch, cid = add_channel(s)
    r, w = os.pipe()
    socket.send_fds(s, [ctl_bytes(protocol.CTL_CANCEL, channel=cid, seq=5)], [r, w])  # fds: closed
    os.close(r)
    os.close(w)
    for channel, seq in ((0, 0), (cid + 100, 1), (2**32 - 1, 2**64 - 1)):
        s.send(ctl_bytes(protocol.CTL_CANCEL, channel=channel, seq=seq))
    assert call(ch, req_bytes(uapi.ACRN_IOCTL_PAUSE_VM, seq=1)).ret == EINVAL
    s.close()
    ch.close()
    settle(service, before)


def test_more_channels_than_the_service_takes(service: HvService, before: Snapshot) -> None:
    """Past MAX_CHANNELS a registration is closed (the client's call fails), the file stays."""
    from acrn.service.server import MAX_CHANNELS

    s = open_file(service.path)
    chans = [add_channel(s)[0] for _ in range(MAX_CHANNELS)]
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    socket.send_fds(s, [ctl_bytes(protocol.CTL_CHANNEL)], [b.fileno()])
    b.close()
    assert is_closed(a)
    a.close()
    assert call(chans[-1], req_bytes(uapi.ACRN_IOCTL_PAUSE_VM)).ret == EINVAL
    for c in chans:
        c.close()
    s.close()
    settle(service, before)


# ------------------------------------------------------------------------------ a channel
_PAUSE = req_bytes(uapi.ACRN_IOCTL_PAUSE_VM)
_VM = bytes(uapi.acrn_vm_creation())
ON_CHANNEL: dict[str, bytes] = {
    "short header": _PAUSE[: REQ_SIZE - 1],
    "wrong magic": req_bytes(uapi.ACRN_IOCTL_PAUSE_VM, magic=protocol.CTL_MAGIC),
    "oversized": bytes(protocol.MAX_REQ + 4096),
    "one byte more than the largest": req_bytes(
        uapi.ACRN_IOCTL_CREATE_VM,
        arg=bytes(protocol.MAX_ARG),
        mems=[protocol.acrn_svc_mem()] * protocol.MAX_MEM,
    )
    + b"\0",
    "arg_len longer than the bytes": req_bytes(uapi.ACRN_IOCTL_CREATE_VM, arg=_VM, arg_len=len(_VM) + 1),
    "arg_len shorter than the bytes": req_bytes(uapi.ACRN_IOCTL_CREATE_VM, arg=_VM, arg_len=len(_VM) - 1),
    "arg_len past the maximum": req_bytes(uapi.ACRN_IOCTL_CREATE_VM, arg=_VM, arg_len=2**32 - 1),
    "nmem past the maximum": req_bytes(uapi.ACRN_IOCTL_CREATE_VM, arg=_VM, nmem=protocol.MAX_MEM + 1),
    "nmem without its entries": req_bytes(uapi.ACRN_IOCTL_CREATE_VM, arg=_VM, nmem=1),
    "nmem 2**32-1": req_bytes(uapi.ACRN_IOCTL_CREATE_VM, nmem=2**32 - 1),
    "a hello": _HELLO,
    "a control message": ctl_bytes(protocol.CTL_CANCEL),
    "64 KiB of garbage": os.urandom(1 << 16),
}


@pytest.mark.parametrize("data", ON_CHANNEL.values(), ids=ON_CHANNEL.keys())
def test_a_malformed_request_ends_its_channel_only(service: HvService, before: Snapshot, data: bytes) -> None:
    s = open_file(service.path)
    ch, _ = add_channel(s)
    fd = memfd(PAGE)
    assert create_vm(ch, fd) == 0
    r, w = os.pipe()
    socket.send_fds(ch, [data], [fd, r, w])
    for x in (fd, r, w):
        os.close(x)
    assert is_closed(ch)
    ch.close()
    # The file and its VM are untouched: another channel carries on.
    assert len(service.machine.hv.vms()) == before.vms + 1
    ch2, _ = add_channel(s)
    assert call(ch2, req_bytes(uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT)).ret >= 0
    ch2.close()
    s.close()
    settle(service, before)


def _mem(
    fd_index: int = 0, length: int = PAGE, offset: int = 0, start: int = 0x7000_0000_0000
) -> protocol.acrn_svc_mem:
    return protocol.acrn_svc_mem(start, length, offset, mmap.PROT_READ | mmap.PROT_WRITE, fd_index)


def _vm(ioreq_buf: int = 0x7000_0000_0000) -> bytes:
    vm = uapi.acrn_vm_creation()
    vm.ioreq_buf = ioreq_buf
    return bytes(vm)


def _pipe_fds() -> list[int]:
    return list(os.pipe())


#: Well-formed datagrams whose contents are wrong: an errno (never the service) pays for them.
#: (request, fds to attach, the result CREATE_VM must get)
LYING: dict[str, tuple[bytes, Callable[[], list[int]], int]] = {
    "memory entry naming a missing fd": (
        req_bytes(uapi.ACRN_IOCTL_CREATE_VM, 1, arg=_vm(), mems=[_mem(fd_index=3)]),
        lambda: [memfd(PAGE)],
        EINVAL,
    ),
    "memory entry with a negative fd index": (
        req_bytes(uapi.ACRN_IOCTL_CREATE_VM, 1, arg=_vm(), mems=[_mem(fd_index=-5)]),
        lambda: [memfd(PAGE)],
        EINVAL,
    ),
    "memory entry backed by a pipe": (
        req_bytes(uapi.ACRN_IOCTL_CREATE_VM, 1, arg=_vm(), mems=[_mem()]),
        _pipe_fds,
        EINVAL,
    ),
    "memory entry past the end of its memfd": (
        req_bytes(uapi.ACRN_IOCTL_CREATE_VM, 1, arg=_vm(), mems=[_mem()]),
        lambda: [memfd(0)],
        EINVAL,
    ),
    "memory entry at an offset past the end": (
        req_bytes(uapi.ACRN_IOCTL_CREATE_VM, 1, arg=_vm(), mems=[_mem(offset=PAGE)]),
        lambda: [memfd(PAGE)],
        EINVAL,
    ),
    "memory entry backed by /dev/zero": (
        req_bytes(uapi.ACRN_IOCTL_CREATE_VM, 1, arg=_vm(), mems=[_mem()]),
        lambda: [os.open("/dev/zero", os.O_RDWR | os.O_CLOEXEC)],
        EINVAL,
    ),
    "memory entry of length zero": (
        req_bytes(uapi.ACRN_IOCTL_CREATE_VM, 1, arg=_vm(), mems=[_mem(length=0)]),
        lambda: [memfd(PAGE)],
        EINVAL,
    ),
    "memory entry of 2**63 bytes": (
        req_bytes(uapi.ACRN_IOCTL_CREATE_VM, 1, arg=_vm(), mems=[_mem(length=2**63)]),
        lambda: [memfd(PAGE)],
        EINVAL,
    ),
    "memory entry not containing the address": (
        req_bytes(uapi.ACRN_IOCTL_CREATE_VM, 1, arg=_vm(0x1000), mems=[_mem()]),
        lambda: [memfd(PAGE)],
        EINVAL,
    ),
    "a struct command without its bytes (a pointer into the service)": (
        req_bytes(uapi.ACRN_IOCTL_CREATE_VM, 0, flags=0),  # value filled in by the test
        lambda: [],
        EFAULT,
    ),
    "a struct command with its bytes short and read-only": (
        req_bytes(
            uapi.ACRN_IOCTL_CREATE_VM,
            1,
            arg=_vm()[:20],
            flags=protocol.ARG_BUF | protocol.ARG_SHORT | protocol.ARG_RO,
        ),
        lambda: [],
        EFAULT,
    ),
    "eight fds and none expected": (
        req_bytes(uapi.ACRN_IOCTL_CREATE_VM, 1, arg=_vm(), flags=protocol.ARG_BUF | protocol.ADDR_FAULT),
        lambda: [memfd(PAGE) for _ in range(protocol.MAX_FDS)],
        EINVAL,
    ),
}


@pytest.mark.parametrize("case", LYING.values(), ids=LYING.keys())
def test_a_request_that_lies_gets_an_errno(
    service: HvService, before: Snapshot, case: tuple[bytes, Callable[[], list[int]], int]
) -> None:
    data, make_fds, want = case
    s = open_file(service.path)
    ch, _ = add_channel(s)
    page = mmap.mmap(-1, 2 * PAGE)
    if (
        data[4:8] == uapi.ACRN_IOCTL_CREATE_VM.to_bytes(4, "little")
        and int.from_bytes(data[8:16], "little") == 0
    ):
        # The request names an address of the service's process that is readable and writable,
        # and says a valid struct lies there: the service must not follow it.
        view = ctypes.c_char.from_buffer(page)
        base = ctypes.addressof(view)
        del view
        page[: len(_VM)] = _vm(base + PAGE)
        data = data[:8] + base.to_bytes(8, "little") + data[16:]
    fds = make_fds()
    try:
        r = call(ch, data, fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert r.ret == want
    assert uapi.acrn_vm_creation.from_buffer_copy(page[: len(_VM)]).vmid == 0, "the service wrote into itself"
    page.close()
    # The channel still works.
    fd = memfd(PAGE)
    assert create_vm(ch, fd, seq=2) == 0
    os.close(fd)
    ch.close()
    s.close()
    settle(service, before)


def test_a_client_cannot_shrink_its_memory_under_the_service(service: HvService, before: Snapshot) -> None:
    """A sealable memfd behind the ioreq page is sealed against shrinking once the service maps
    it: truncating it afterwards would make the driver's next write SIGBUS the service."""
    s = open_file(service.path)
    ch, _ = add_channel(s)
    fd = os.memfd_create("svc-seal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, PAGE)
    assert create_vm(ch, fd) == 0
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 0)
    os.ftruncate(fd, 2 * PAGE)  # growing stays allowed
    os.close(fd)
    assert call(ch, req_bytes(uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT, seq=2)).ret >= 0
    ch.close()
    s.close()
    settle(service, before)


# ------------------------------------------------------------------------------ clients that go away
RAM = 1 << 20
RAM_AT = 0x7100_0000_0000
#: Real mode at 0: OUT to port 0x80 forever (every exit is an I/O request for the client).
OUT_LOOP = bytes([0xBA, 0x80, 0x00, 0xEE, 0xEB, 0xFD])  # mov dx, 0x80; l: out dx, al; jmp l


def start_vm(ch: socket.socket, name: bytes) -> None:
    """CREATE_VM, 1 MiB of RAM running OUT_LOOP, an ioreq client, START_VM: as acrn-dm does."""
    ioreq = memfd(PAGE)
    assert create_vm(ch, ioreq, name=name, seq=1) == 0
    os.close(ioreq)
    ram = memfd(RAM)
    os.pwrite(ram, OUT_LOOP, 0)
    m = uapi.acrn_vm_memmap(type=uapi.ACRN_MEMMAP_RAM, attr=uapi.ACRN_MEM_ACCESS_RWX, user_vm_pa=0, len=RAM)
    m.vma_base = RAM_AT
    mem = protocol.acrn_svc_mem(RAM_AT, RAM, 0, mmap.PROT_READ | mmap.PROT_WRITE, 0)
    assert call(ch, req_bytes(uapi.ACRN_IOCTL_SET_MEMSEG, 1, arg=bytes(m), mems=[mem], seq=2), [ram]).ret == 0
    os.close(ram)
    r = uapi.acrn_vcpu_regs()
    r.vcpu_regs.cr0, r.vcpu_regs.cs_ar, r.vcpu_regs.cs_limit = 0x30, 0x9F, 0xFFFF
    assert call(ch, req_bytes(uapi.ACRN_IOCTL_SET_VCPU_REGS, 1, arg=bytes(r), seq=3)).ret == 0
    assert call(ch, req_bytes(uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT, seq=4)).ret >= 0
    assert call(ch, req_bytes(uapi.ACRN_IOCTL_START_VM, seq=5)).ret == 0


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_disconnect_while_attach_blocks(service: HvService, before: Snapshot) -> None:
    """ATTACH blocks (no VM running): the client closes both sockets; the file is released."""
    s = open_file(service.path)
    ch, _ = add_channel(s)
    fd = memfd(PAGE)
    assert create_vm(ch, fd) == 0
    os.close(fd)
    assert call(ch, req_bytes(uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT, seq=2)).ret >= 0
    ch.send(req_bytes(uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT, seq=3))
    f = next(iter(service.files))
    _wait(lambda: any(c.current is not None for c in f.channels.values()))
    ch.close()
    s.close()
    settle(service, before)


def test_main_closed_while_attach_blocks_then_channel(service: HvService, before: Snapshot) -> None:
    """The last close of the file while a call is in flight: the call holds the file (as an ioctl
    holds the kernel's) until the calling thread goes too."""
    s = open_file(service.path)
    ch, _ = add_channel(s)
    fd = memfd(PAGE)
    assert create_vm(ch, fd) == 0
    os.close(fd)
    assert call(ch, req_bytes(uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT, seq=2)).ret >= 0
    ch.send(req_bytes(uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT, seq=3))
    f = next(iter(service.files))
    _wait(lambda: any(c.current is not None for c in f.channels.values()))
    s.close()
    time.sleep(0.2)
    ch.close()
    settle(service, before)


@pytest.mark.parametrize("when", ["attached", "request pending", "after notify"])
def test_disconnect_while_the_vm_runs(service: HvService, before: Snapshot, when: str) -> None:
    s = open_file(service.path)
    ch, _ = add_channel(s)
    start_vm(ch, b"svc-running")
    if when != "attached":
        assert call(ch, req_bytes(uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT, seq=6)).ret == 0
    if when == "after notify":
        n = uapi.acrn_ioreq_notify(vmid=0, vcpu=0)
        call(ch, req_bytes(uapi.ACRN_IOCTL_NOTIFY_REQUEST_FINISH, 1, arg=bytes(n), seq=7))
    else:
        ch.send(req_bytes(uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT, seq=8))
    vm = service.machine.hv.vms()[0]
    assert vm.state.name == "RUNNING"
    s.close()
    ch.close()
    settle(service, before)


def test_a_client_that_never_reads_its_replies(service: HvService, before: Snapshot) -> None:
    """Requests pile up until the service blocks sending a reply; other clients go on, and when
    the client goes, so does everything it held."""
    s = open_file(service.path)
    ch, _ = add_channel(s)
    fd = memfd(PAGE)
    assert create_vm(ch, fd) == 0
    os.close(fd)
    ch.setblocking(False)
    sent = 0
    req = req_bytes(uapi.ACRN_IOCTL_PM_GET_CPU_STATE, 1, arg=bytes(48))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            ch.send(req)
            sent += 1
        except BlockingIOError:
            time.sleep(0.05)
            try:
                ch.send(req)
                sent += 1
            except BlockingIOError:
                break
    assert sent > 10
    other = open_file(service.path)
    och, _ = add_channel(other)
    assert call(och, req_bytes(uapi.ACRN_IOCTL_PAUSE_VM)).ret == EINVAL
    och.close()
    other.close()
    s.close()
    ch.close()
    settle(service, before)


def _cycles(service: HvService, n: int) -> None:
    for i in range(n):
        s = connect(service.path)
        if i % 3 == 0:
            s.close()  # before the hello
            continue
        s.send(hello_bytes())
        if i % 3 == 1:
            s.close()  # without reading the reply
            continue
        s.recv(64)
        ch, _ = add_channel(s)
        call(ch, req_bytes(uapi.ACRN_IOCTL_PAUSE_VM))
        s.close()
        ch.close()


def test_a_thousand_connect_disconnect_cycles(service: HvService, before: Snapshot) -> None:
    _cycles(service, 1000)
    settle(service, before, timeout=60)


@pytest.mark.slow
def test_fifty_thousand_connect_disconnect_cycles(service: HvService, before: Snapshot) -> None:
    for _ in range(50):
        _cycles(service, 1000)
        settle(service, before, timeout=60)
