"""The hypervisor service: one emulated ACRN hypervisor for the host, reached over a Unix socket.

On ACRN there is one hypervisor per machine and every Service VM process opening
``/dev/acrn_hsm`` shares it: VM names are unique across processes, vmids are global, and the
kernel releases a process's VMs when the last reference to its file goes, however it dies
(``drivers/virt/acrn/hsm.c: acrn_dev_release``).  :class:`HvService` is that for pyacrn: it owns
one :class:`~acrn.emu.machine.Machine`; each connection to its socket is one open file
(:class:`OpenFile`, an :class:`~acrn.emu.hsm.HsmFile` underneath), and the wire protocol is
``protocol.h``.

Threads: one accepting connections; per open file one control thread (channel registrations,
cancellations, and the watch for the client's end: EOF of the connection releases the file,
a vanished channel ends the call it had in flight, as a fatal signal ends a syscall); per
channel one thread that runs the caller's ioctls in order.  A blocked ATTACH therefore blocks
only its channel.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from acrn import uapi
from acrn.service import protocol
from acrn.service.client_mappings import ClientMemory, Scratch, guard_address

if TYPE_CHECKING:
    from acrn.emu.hsm import HsmFile
    from acrn.emu.machine import Machine

log = logging.getLogger("acrn.service")
trace = logging.getLogger("acrn.trace")

#: Where the embedded user address of an ioctl sits in its argument (bytes), or "value".
_EMBEDDED: dict[int, int | str] = {
    uapi.ACRN_IOCTL_CREATE_VM: 32,  # acrn_vm_creation.ioreq_buf
    uapi.ACRN_IOCTL_SET_MEMSEG: 16,  # acrn_vm_memmap.vma_base (type RAM)
    uapi.ACRN_IOCTL_VM_INTR_MONITOR: "value",
}
_EVENTFD_CMDS = (uapi.ACRN_IOCTL_IOEVENTFD, uapi.ACRN_IOCTL_IRQFD)
#: Commands whose argument points to bytes the driver reads or writes (a struct, or a u64).
_POINTER_CMDS = frozenset(c for c, k in uapi.IOCTL_ARG.items() if isinstance(k, type) or k == "u64ptr")
_POLL_HUP = select.POLLHUP | select.POLLERR | select.POLLRDHUP | select.POLLNVAL
_HELLO_TIMEOUT = 10.0
#: Bound on the wait for a release that is due (settle_releases); it takes milliseconds.
_SETTLE_TIMEOUT = 10.0
MAX_CHANNELS = 256


class ServiceError(Exception):
    """The service cannot start (socket in use, bad path): one line for the user."""


def default_socket_path() -> str:
    """``$ACRN_HV_SOCKET``, else ``$XDG_RUNTIME_DIR/pyacrn-hv.sock``, else ``/run/pyacrn-hv.sock``
    for root and ``/tmp/pyacrn-hv-<uid>.sock`` for others."""
    env = os.environ.get("ACRN_HV_SOCKET")
    if env:
        return env
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "pyacrn-hv.sock")
    if os.geteuid() == 0 and os.path.isdir("/run"):
        return "/run/pyacrn-hv.sock"
    return f"/tmp/pyacrn-hv-{os.geteuid()}.sock"


def _recv_fds(sock: socket.socket, size: int) -> tuple[bytes, list[int]]:
    """One datagram and the fds attached to it (close-on-exec); truncation is a protocol error."""
    data, fds, flags, _ = socket.recv_fds(sock, size, protocol.MAX_FDS, socket.MSG_CMSG_CLOEXEC)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise protocol.ProtocolError("message or its attached fds truncated")
    return data, list(fds)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Channel:
    """One calling thread's channel: its ioctls, one at a time."""

    def __init__(self, file: OpenFile, cid: int, sock: socket.socket) -> None:
        self.file = file
        self.id = cid
        self.sock = sock
        #: (seq, cmd) of the call in flight, or None.
        self.current: tuple[int, int] | None = None
        self.thread = threading.Thread(target=self._main, name=f"acrn-hv-chan{cid}", daemon=True)

    def _main(self) -> None:
        try:
            while True:
                try:
                    data, fds = _recv_fds(self.sock, protocol.MAX_REQ + 1)
                except (OSError, protocol.ProtocolError) as e:
                    log.debug("channel %d: %s", self.id, e)
                    break
                if not data:
                    _close_all(fds)
                    break
                try:
                    req, mems, arg = protocol.parse_req(data)
                except protocol.ProtocolError as e:
                    log.warning("pid %d: dropped a malformed request: %s", self.file.pid, e)
                    _close_all(fds)
                    break
                self.current = (req.seq, req.cmd)
                try:
                    ret, out = self.file.call(req, mems, arg, fds)
                finally:
                    self.current = None
                    _close_all(fds)
                try:
                    self.sock.send(protocol.reply(req.seq, ret, out))
                except OSError:
                    break
        finally:
            self.sock.close()
            self.file.channel_ended(self)


class OpenFile:
    """One open file of ``/dev/acrn_hsm``: a client connection, its HSM file and its channels."""

    def __init__(self, service: HvService, sock: socket.socket, pid: int, uid: int) -> None:
        self.service = service
        self.sock = sock
        self.pid = pid
        self.uid = uid
        self.opened = time.time()
        self.hsm: HsmFile = service.machine.open()
        self.memory = ClientMemory()
        self.channels: dict[int, Channel] = {}
        self._next_channel = 1
        self._lock = threading.Condition()
        self._in_flight = 0
        self._closing = False
        self.released = False
        #: Set once the HSM file is released (its VM destroyed).
        self.gone = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def abandoned(self) -> bool:
        """Whether the client's last reference is already gone (the kernel has delivered the EOF)
        and no call of a live thread holds the file: its release is due and needs nobody else."""
        if self.gone.is_set():
            return False
        if not _peer_gone(self.sock):
            return False
        with self._lock:
            channels = list(self.channels.values())
        return all(ch.current is None or _peer_gone(ch.sock) for ch in channels)

    # ------------------------------------------------------------------ the control thread
    def serve(self) -> None:
        """Control messages until the client's last reference goes; then release the file."""
        try:
            self._control_loop()
        finally:
            self._release()

    def _control_loop(self) -> None:
        poller = select.poll()
        main = self.sock.fileno()
        poller.register(main, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        watched: dict[int, Channel] = {}
        hung_up: weakref.WeakSet[Channel] = weakref.WeakSet()
        main_open = True
        while True:
            with self._lock:
                # After the client's last close, calls still in flight hold the file (as an
                # ioctl holds the kernel's); the loop keeps watching their channels till then.
                if self.service.stopping or (self._closing and not self._in_flight):
                    return
                # A channel that ended leaves the poll set at once: poll() holds a reference to
                # every file it waits on, so its socket would stay open (the client would not
                # see it close) while this thread waits.  Its fd number may already be reused.
                for fd, ch in list(watched.items()):
                    if self.channels.get(ch.id) is not ch:
                        del watched[fd]
                        poller.unregister(fd)
                for ch in self.channels.values():
                    fd = ch.sock.fileno()
                    if fd >= 0 and fd not in watched and ch not in hung_up:
                        watched[fd] = ch
                        poller.register(fd, select.POLLRDHUP)
            for fd, ev in poller.poll():
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 64)
                elif fd == main and main_open:
                    if not self._control_message():
                        main_open = False
                        poller.unregister(main)
                        with self._lock:
                            self._closing = True
                elif fd in watched and ev & _POLL_HUP:
                    # The calling thread is gone (it exited, or its process died): its call in
                    # flight ends, as a fatal signal ends a blocked ioctl.
                    ch = watched.pop(fd)
                    poller.unregister(fd)
                    hung_up.add(ch)  # not polled again: its thread ends once its call returns
                    if ch.current is not None and ch.current[1] == uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT:
                        self.hsm.interrupt_attach()

    def _control_message(self) -> bool:
        """Handle one message on the connection; False at EOF or on garbage (the file goes)."""
        try:
            data, fds = _recv_fds(self.sock, ctypes.sizeof(protocol.acrn_svc_ctl) + 1)
        except (OSError, protocol.ProtocolError) as e:
            log.debug("pid %d: connection: %s", self.pid, e)
            return False
        if not data:
            _close_all(fds)
            return False
        if len(data) != ctypes.sizeof(protocol.acrn_svc_ctl):
            log.warning("pid %d: malformed control message (%d bytes); closing its file", self.pid, len(data))
            _close_all(fds)
            return False
        ctl = protocol.acrn_svc_ctl.from_buffer_copy(data)
        if ctl.magic != protocol.CTL_MAGIC:
            log.warning("pid %d: bad control magic %#x; closing its file", self.pid, ctl.magic)
            _close_all(fds)
            return False
        if ctl.op == protocol.CTL_CHANNEL and len(fds) == 1:
            return self._add_channel(fds[0])
        _close_all(fds)
        if ctl.op == protocol.CTL_CANCEL:
            with self._lock:
                ch = self.channels.get(ctl.channel)
            cur = ch.current if ch is not None else None
            if cur is not None and cur == (ctl.seq, uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT):
                # A signal reached the thread blocked in ATTACH: it returns 0 (the HSM ignores the
                # result of wait_event_interruptible, drivers/virt/acrn/ioreq.c:
                # acrn_ioreq_client_wait).  Every waiter of the file wakes; see docs/service.md.
                self.hsm.interrupt_attach()
            return True
        log.warning("pid %d: unknown control op %d; closing its file", self.pid, ctl.op)
        return False

    def _add_channel(self, fd: int) -> bool:
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            return False
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
            log.warning("pid %d: a channel must be a SOCK_SEQPACKET Unix socket", self.pid)
            sock.close()
            return False
        with self._lock:
            if len(self.channels) >= MAX_CHANNELS or self._closing:
                sock.close()
                return True
            cid = self._next_channel
            self._next_channel += 1
            ch = Channel(self, cid, sock)
            self.channels[cid] = ch
        with contextlib.suppress(OSError):
            sock.send(bytes(protocol.acrn_svc_channel_hello(protocol.CTL_MAGIC, cid)))
        ch.thread.start()
        return True

    def channel_ended(self, ch: Channel) -> None:
        with self._lock:
            self.channels.pop(ch.id, None)
            self._lock.notify_all()
        self._wake()  # the control loop stops polling its socket

    # ------------------------------------------------------------------ calls
    @contextlib.contextmanager
    def _call_in_flight(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                wake = self._closing and not self._in_flight
            if wake:
                self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def call(
        self, req: protocol.acrn_svc_req, mems: list[protocol.acrn_svc_mem], arg: bytes, fds: list[int]
    ) -> tuple[int, bytes]:
        """Run one ioctl on the HSM file: (result or -errno, bytes to write back)."""
        with self._call_in_flight():
            if self.released:
                return -errno.EBADF, b""
            try:
                return self._call(req, mems, arg, fds)
            except Exception:
                # Nothing a client sends may take the service down; the driver's own refusals
                # are OSError and handled below, so this is a bug worth a traceback in the log.
                log.exception("pid %d: ioctl %#x failed inside the service", self.pid, req.cmd)
                return -errno.EIO, b""

    def _call(
        self, req: protocol.acrn_svc_req, mems: list[protocol.acrn_svc_mem], arg: bytes, fds: list[int]
    ) -> tuple[int, bytes]:
        cmd = req.cmd
        if cmd == uapi.ACRN_IOCTL_CREATE_VM:
            self.service.settle_releases(self)
        buf = bytearray(arg)
        value = req.value
        where = _EMBEDDED.get(cmd)
        restore: tuple[int, bytes] | None = None
        if where is not None:
            if where == "value":
                value = self._translate(req, mems, fds, value)
            elif (
                isinstance(where, int)
                and len(buf) >= where + 8
                and (
                    cmd != uapi.ACRN_IOCTL_SET_MEMSEG
                    or int.from_bytes(buf[0:4], "little") == uapi.ACRN_MEMMAP_RAM
                )
            ):
                client_addr = int.from_bytes(buf[where : where + 8], "little")
                restore = (where, bytes(buf[where : where + 8]))
                svc = self._translate(req, mems, fds, client_addr)
                buf[where : where + 8] = svc.to_bytes(8, "little")
        if cmd in _EVENTFD_CMDS and len(buf) >= 4:
            if req.flags & protocol.FD_SENT and 0 <= req.fd_index < len(fds):
                buf[0:4] = fds[req.fd_index].to_bytes(4, "little")
            else:
                buf[0:4] = b"\xff\xff\xff\xff"  # not an open fd: the driver's fdget fails (EBADF)
        scratch: Scratch | None = None
        arg_obj: object
        if not req.flags & protocol.ARG_BUF:
            # A pointer sent without its bytes would be followed in the service's own memory
            # (read, and written back): to the driver it is an address that cannot be read.
            arg_obj = guard_address(value) if cmd in _POINTER_CMDS else value
        elif req.flags & (protocol.ARG_SHORT | protocol.ARG_RO):
            scratch = Scratch(bytes(buf), read_only=bool(req.flags & protocol.ARG_RO))
            arg_obj = scratch.address
        else:
            arg_obj = buf
        sent = bytes(buf)
        try:
            try:
                ret = self.hsm.ioctl(cmd, arg_obj)
            except OSError as e:
                ret = -(e.errno or errno.EIO)
            after = scratch.read() if scratch is not None else bytes(buf)
        finally:
            if scratch is not None:
                scratch.close()
        if restore is not None:
            # The client sees its own address where the driver saw the service's.
            at, orig = restore
            sent = sent[:at] + orig + sent[at + 8 :]
            after = after[:at] + orig + after[at + 8 :]
        out = _changed_prefix(sent, after)
        if trace.isEnabledFor(logging.DEBUG):
            self._trace(cmd, req, arg, after, ret)
        return ret, out

    def _trace(self, cmd: int, req: protocol.acrn_svc_req, arg: bytes, after: bytes, ret: int) -> None:
        """The call as ``acrn -v`` shows in-process ones (acrn.device), with the client's pid and
        its own addresses (the argument as the client sent it)."""
        from acrn.device import describe_arg

        name = uapi.IOCTL_NAMES.get(cmd, f"{cmd:#010x}")
        shown: object = bytearray(arg) if req.flags & protocol.ARG_BUF else req.value
        result = str(ret) if ret >= 0 else f"-1 {errno.errorcode.get(-ret, str(-ret))}"
        back = ""
        if ret >= 0 and uapi.ioc_dir(cmd) & 2 and req.flags & protocol.ARG_BUF:
            back = " => " + describe_arg(cmd, bytearray(after))
        trace.debug("[pid %d] %s(%s) = %s%s", self.pid, name, describe_arg(cmd, shown), result, back)

    def _translate(
        self, req: protocol.acrn_svc_req, mems: list[protocol.acrn_svc_mem], fds: list[int], client_addr: int
    ) -> int:
        if req.flags & protocol.ADDR_FAULT or not mems:
            return guard_address(client_addr)
        mem = mems[0]
        if not 0 <= mem.fd_index < len(fds):
            return guard_address(client_addr)
        return self.memory.translate(mem, fds[mem.fd_index], client_addr)

    # ------------------------------------------------------------------ release
    def shutdown(self) -> None:
        """The service stops: end the control loop (the file is then released)."""
        with self._lock:
            self._closing = True
        self._wake()

    def _release(self) -> None:
        """``acrn_dev_release`` once no call is in flight (an ioctl holds the file, as in Linux)."""
        with self._lock:
            self._closing = True
        if self.service.stopping:
            self.hsm.interrupt_attach()
        self.hsm.release()  # destroys the VM; a blocked ATTACH wakes with ENODEV
        self.released = True
        self.gone.set()
        with self._lock:
            channels = list(self.channels.values())
        for ch in channels:
            with contextlib.suppress(OSError):
                ch.sock.shutdown(socket.SHUT_RDWR)
        for ch in channels:
            if ch.thread.is_alive() and ch.thread is not threading.current_thread():
                ch.thread.join(5)
        self.memory.close()
        self.sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.service.file_released(self)

    def status(self) -> dict[str, Any]:
        vm = self.hsm.vm
        return {
            "pid": self.pid,
            "uid": self.uid,
            "vmid": vm.vmid if vm.valid else None,
            "opened": self.opened,
        }


def _changed_prefix(before: bytes, after: bytes) -> bytes:
    """``after`` up to its last byte that differs from ``before``: what the kernel wrote back."""
    n = min(len(before), len(after))
    last = -1
    for i in range(n - 1, -1, -1):
        if before[i] != after[i]:
            last = i
            break
    return after[: last + 1]


class HvService:
    """The host's emulated hypervisor behind a Unix socket (``acrn hv``)."""

    def __init__(self, machine: Machine, path: str | None = None) -> None:
        self.machine = machine
        self.path = path or default_socket_path()
        self.stopping = False
        self.started = time.time()
        self.files: set[OpenFile] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()
        self._idle = threading.Condition(self._lock)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    # ------------------------------------------------------------------ start / stop
    def start(self) -> None:
        """Bind the socket (mode 0600) and accept clients on a thread; ServiceError if impossible."""
        path = self.path
        if len(path.encode()) >= 108:
            raise ServiceError(f"socket path {path!r} is longer than a Unix socket path may be (107 bytes)")
        parent = os.path.dirname(path) or "."
        if not os.path.isdir(parent):
            raise ServiceError(f"socket path {path!r}: directory {parent!r} does not exist")
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise ServiceError(f"{path} exists and is not a socket; choose another path with --socket")
            if _live(path):
                raise ServiceError(f"a pyacrn hypervisor service already listens on {path}")
            os.unlink(path)  # stale: its service died without removing it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError as e:
            sock.close()
            raise ServiceError(f"cannot create the socket {path}: {e.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(64)
        self._listener = sock
        self._accept_thread = threading.Thread(target=self._accept_loop, name="acrn-hv-accept", daemon=True)
        self._accept_thread.start()
        log.debug("listening on %s (%d pCPUs, accelerator %s)", path, self.machine.platform.pcpu_num,
                 self.machine.runtime.accel_name)  # fmt: skip

    def stop(self) -> None:
        """Release every open file (their VMs are destroyed), remove the socket, end all threads."""
        if self.stopping:
            return
        self.stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        if self._listener is not None:
            with contextlib.suppress(OSError):
                st = os.lstat(self.path)
                if stat.S_ISSOCK(st.st_mode) and os.fstat(self._listener.fileno()).st_ino:
                    os.unlink(self.path)
            self._listener.close()
        with self._lock:
            files = list(self.files)
        for f in files:
            f.shutdown()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(10)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> HvService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ connections
    def _accept_loop(self) -> None:
        assert self._listener is not None
        poller = select.poll()
        poller.register(self._listener.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self.stopping:
            events = poller.poll()
            if self.stopping:
                break
            if not any(fd == self._listener.fileno() for fd, _ in events):
                continue
            try:
                conn, _ = self._listener.accept()
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    log.warning("out of file descriptors; a client waits")
                    time.sleep(0.1)
                continue
            t = threading.Thread(target=self._connection, args=(conn,), name="acrn-hv-conn", daemon=True)
            with self._lock:
                self._threads.add(t)
            t.start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            self._serve_connection(conn)
        except Exception:
            log.exception("connection failed")
            conn.close()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
                self._idle.notify_all()

    def _serve_connection(self, conn: socket.socket) -> None:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        conn.settimeout(_HELLO_TIMEOUT)
        try:
            data, fds = _recv_fds(conn, ctypes.sizeof(protocol.acrn_svc_hello) + 1)
        except (OSError, protocol.ProtocolError):
            conn.close()
            return
        _close_all(fds)
        conn.settimeout(None)
        if len(data) != ctypes.sizeof(protocol.acrn_svc_hello):
            conn.close()
            return
        hello = protocol.acrn_svc_hello.from_buffer_copy(data)
        if hello.magic != protocol.HELLO_MAGIC or hello.version != protocol.VERSION:
            log.warning("pid %d: not a pyacrn client (magic %#x version %d)", pid, hello.magic, hello.version)
            conn.close()
            return
        if hello.kind == protocol.STATUS:
            with contextlib.suppress(OSError):
                conn.send(json.dumps(self.status()).encode())
            conn.close()
            return
        if hello.kind != protocol.OPEN or self.stopping:
            conn.close()
            return
        f = OpenFile(self, conn, pid, uid)
        with self._lock:
            self.files.add(f)
        with contextlib.suppress(OSError):
            conn.send(bytes(protocol.acrn_svc_hello_reply(protocol.HELLO_MAGIC, 0)))
        log.info("pid %d opened the HSM (%d open)", pid, len(self.files))
        f.serve()

    def settle_releases(self, caller: OpenFile | None = None) -> None:
        """Finish the releases that are already due before going on.

        In Linux, ``close()`` of the last reference (or the exit of a process) releases the HSM
        file before it returns, so a CREATE_VM that follows finds the name, the vmid and the
        configuration slot free.  Here the release runs on the file's control thread once it
        sees the EOF; a client's next CREATE_VM may overtake it.  The EOF is already visible
        on the connection when ``close()`` returns, so waiting here for the files whose EOF is
        visible gives the same order.
        """
        with self._lock:
            files = [f for f in self.files if f is not caller]
        for f in files:
            if f.abandoned() and not f.gone.wait(_SETTLE_TIMEOUT):
                log.warning(
                    "pid %d: its HSM file was closed but not released within %.0f s", f.pid, _SETTLE_TIMEOUT
                )

    def file_released(self, f: OpenFile) -> None:
        with self._lock:
            self.files.discard(f)
        log.info("pid %d: HSM file released", f.pid)

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """The service and its live VMs (what ``acrn ps`` prints)."""
        hv = self.machine.hv
        self.settle_releases()
        with self._lock:
            files = list(self.files)
        owners = {f.hsm.vm.vmid: f for f in files if f.hsm.vm.valid}
        now = time.time()
        vms = []
        for vm in hv.vms():
            f = owners.get(vm.vmid)
            vms.append(
                {
                    "vmid": vm.vmid,
                    "name": vm.name,
                    "state": vm.state.name,
                    "vcpus": vm.vcpu_num,
                    "memory": sum(r.size for r in vm.memory_regions if r.hpa is not None),
                    "accelerator": self.machine.runtime.accel_name,
                    "pid": f.pid if f is not None else None,
                    "uptime": round(now - f.opened, 3) if f is not None else None,
                }
            )
        return {
            "socket": self.path,
            "pid": os.getpid(),
            "uptime": round(now - self.started, 3),
            "pcpus": self.machine.platform.pcpu_num,
            "accelerator": self.machine.runtime.accel_name,
            "open_files": len(files),
            "vms": vms,
        }


def _peer_gone(sock: socket.socket) -> bool:
    """Whether the other end of ``sock`` is closed (or ``sock`` itself already is)."""
    try:
        fd = sock.fileno()
        if fd < 0:
            return True
        p = select.poll()
        p.register(fd, select.POLLRDHUP)
        return any(ev & _POLL_HUP for _, ev in p.poll(0))
    except (OSError, ValueError):
        return True


def _live(path: str) -> bool:
    """Whether a service answers on ``path`` (a socket file left by a dead one refuses)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(2)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def query_status(path: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the service at ``path`` for its status (OSError if it is not there)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        s.connect(path)
        s.send(
            bytes(
                protocol.acrn_svc_hello(
                    protocol.HELLO_MAGIC, protocol.VERSION, protocol.STATUS, os.getpid(), 0
                )
            )
        )
        chunks = s.recv(1 << 20)
    finally:
        s.close()
    data: dict[str, Any] = json.loads(chunks.decode())
    return data
