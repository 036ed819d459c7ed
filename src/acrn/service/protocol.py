"""The wire protocol of the hypervisor service, mirroring ``protocol.h`` (read that first).

One connection to the service is one open file of ``/dev/acrn_hsm``; its first message is an
:class:`acrn_svc_hello`.  The connection then carries control messages only (:class:`acrn_svc_ctl`:
channel registrations with the channel's fd attached, and cancellations); each calling thread
sends :class:`acrn_svc_req` on a channel of its own and gets one :class:`acrn_svc_rep` back.
Every integer is little-endian.  ``tests/service/test_service_python.py`` compiles ``protocol.h`` and
checks these layouts and constants against it.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_int64, c_uint16, c_uint32, c_uint64
from typing import Final

VERSION: Final = 1
HELLO_MAGIC: Final = 0x48524341
REQ_MAGIC: Final = 0x51524341
REP_MAGIC: Final = 0x50524341
CTL_MAGIC: Final = 0x43524341

OPEN: Final = 1
STATUS: Final = 2

CTL_CHANNEL: Final = 1
CTL_CANCEL: Final = 2

ARG_BUF: Final = 0x1
ARG_SHORT: Final = 0x2
ARG_RO: Final = 0x4
ADDR_FAULT: Final = 0x8
FD_SENT: Final = 0x10
FD_BAD: Final = 0x20

MAX_ARG: Final = 4096
MAX_MEM: Final = 4
MAX_FDS: Final = 8


class acrn_svc_hello(ctypes.LittleEndianStructure):
    _fields_ = [("magic", c_uint32), ("version", c_uint16), ("kind", c_uint16), ("pid", c_uint32),
                ("reserved", c_uint32)]  # fmt: skip


class acrn_svc_hello_reply(ctypes.LittleEndianStructure):
    _fields_ = [("magic", c_uint32), ("status", c_int32)]


class acrn_svc_ctl(ctypes.LittleEndianStructure):
    _fields_ = [("magic", c_uint32), ("op", c_uint32), ("channel", c_uint32), ("reserved", c_uint32),
                ("seq", c_uint64)]  # fmt: skip


class acrn_svc_channel_hello(ctypes.LittleEndianStructure):
    _fields_ = [("magic", c_uint32), ("channel", c_uint32)]


class acrn_svc_mem(ctypes.LittleEndianStructure):
    _fields_ = [("start", c_uint64), ("len", c_uint64), ("offset", c_uint64), ("prot", c_uint32),
                ("fd_index", c_int32)]  # fmt: skip


class acrn_svc_req(ctypes.LittleEndianStructure):
    _fields_ = [("magic", c_uint32), ("cmd", c_uint32), ("value", c_uint64), ("seq", c_uint64),
                ("arg_len", c_uint32), ("flags", c_uint32), ("nmem", c_uint32), ("fd_index", c_int32)]  # fmt: skip


class acrn_svc_rep(ctypes.LittleEndianStructure):
    _fields_ = [("magic", c_uint32), ("out_len", c_uint32), ("ret", c_int64), ("seq", c_uint64)]


#: Largest request datagram: header, memory entries, argument.
MAX_REQ: Final = ctypes.sizeof(acrn_svc_req) + MAX_MEM * ctypes.sizeof(acrn_svc_mem) + MAX_ARG


class ProtocolError(Exception):
    """A message that does not follow ``protocol.h``: the service drops it (and the sender)."""


def parse_req(data: bytes) -> tuple[acrn_svc_req, list[acrn_svc_mem], bytes]:
    """Split a request datagram into its header, memory entries and argument bytes."""
    hdr_size = ctypes.sizeof(acrn_svc_req)
    if len(data) < hdr_size:
        raise ProtocolError(f"request of {len(data)} bytes is shorter than its header ({hdr_size})")
    req = acrn_svc_req.from_buffer_copy(data)
    if req.magic != REQ_MAGIC:
        raise ProtocolError(f"request magic {req.magic:#x}")
    if req.nmem > MAX_MEM or req.arg_len > MAX_ARG:
        raise ProtocolError(f"request with {req.nmem} memory entries and {req.arg_len} argument bytes")
    mem_size = ctypes.sizeof(acrn_svc_mem)
    end = hdr_size + req.nmem * mem_size
    if len(data) != end + req.arg_len:
        raise ProtocolError(f"request of {len(data)} bytes, its header says {end + req.arg_len}")
    mems = [acrn_svc_mem.from_buffer_copy(data, hdr_size + i * mem_size) for i in range(req.nmem)]
    return req, mems, data[end:]


def reply(seq: int, ret: int, out: bytes = b"") -> bytes:
    """A reply datagram: result (or -errno) and the bytes to write back at the argument."""
    return bytes(acrn_svc_rep(REP_MAGIC, len(out), ret, seq)) + out
