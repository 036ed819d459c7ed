"""Loading and saving ``acrn_vcpu_regs``: JSON (C field names) or the exact 296-byte blob.

The format of an input is told by its content: text that parses as a JSON object is JSON; anything
else of exactly ``sizeof(struct acrn_vcpu_regs)`` bytes is the binary blob the ioctl passes.  A blob
whose first byte happens to be ``{`` is still read as a blob when it does not parse as JSON.
Errors are ``RegsFormatError`` (a ValueError) naming the file and the field.
"""

from __future__ import annotations

import ctypes
import json
import os
from typing import Final

from acrn import uapi
from acrn.regs.model import RegsFormatError, VcpuRegs

BLOB_SIZE: Final = ctypes.sizeof(uapi.acrn_vcpu_regs)


def _looks_like_json(data: bytes) -> bool:
    return data.lstrip()[:1] == b"{"


def loads_regs(data: bytes, name: str = "input") -> VcpuRegs:
    """Decode JSON or a 296-byte blob (see the module docstring); ``name`` prefixes error messages."""
    json_error: Exception | None = None
    if _looks_like_json(data):
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            json_error = e
        else:
            try:
                return VcpuRegs.from_json_dict(doc)
            except RegsFormatError as e:
                raise RegsFormatError(f"{name}: {e}") from None
    if len(data) == BLOB_SIZE:
        return VcpuRegs.from_bytes(data)
    if json_error is not None:
        raise RegsFormatError(f"{name}: invalid JSON: {json_error}")
    raise RegsFormatError(
        f"{name}: neither a JSON object nor a {BLOB_SIZE}-byte acrn_vcpu_regs blob ({len(data)} bytes)"
    )


def load_regs(path: str | os.PathLike[str]) -> VcpuRegs:
    """Read a register file (JSON or blob); ``-`` reads standard input."""
    name = os.fspath(path)
    if name == "-":
        import sys

        data = sys.stdin.buffer.read()
    else:
        with open(name, "rb") as f:
            data = f.read()
    return loads_regs(data, name)


def dumps_json(regs: VcpuRegs, *, hex_values: bool = True) -> str:
    """JSON text with the C field names; integers as hex strings by default (they read back the same)."""
    return json.dumps(regs.to_json_dict(hex_values=hex_values), indent=2) + "\n"


def save_json(regs: VcpuRegs, path: str | os.PathLike[str], *, hex_values: bool = True) -> None:
    """Write the JSON form to ``path``."""
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        f.write(dumps_json(regs, hex_values=hex_values))


def save_blob(regs: VcpuRegs, path: str | os.PathLike[str]) -> None:
    """Write the exact 296-byte blob the ioctl takes to ``path``."""
    data = regs.to_bytes()
    with open(os.fspath(path), "wb") as f:
        f.write(data)


def flatten(regs: VcpuRegs) -> dict[str, int]:
    """Every field by its C path (``vcpu_regs.gprs.rax``, ``vcpu_regs.gdt.reserved[1]``), in struct order."""
    out: dict[str, int] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            assert isinstance(value, int)
            out[prefix] = value

    walk("", regs.to_json_dict())
    return out


def diff(a: VcpuRegs, b: VcpuRegs) -> list[tuple[str, int, int]]:
    """``(field, a_value, b_value)`` for every field that differs, in struct order."""
    fa, fb = flatten(a), flatten(b)
    return [(k, fa[k], fb[k]) for k in fa if fa[k] != fb[k]]
