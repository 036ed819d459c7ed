"""``VcpuRegs``: a friendly, typed form of ``struct acrn_vcpu_regs``.

It converts byte-exactly to and from the 296-byte C structure and to and from JSON.  JSON uses the
C field names and nesting (``vcpu_id``, ``reserved``, ``vcpu_regs.gprs.rax``, ``vcpu_regs.gdt.base``,
``vcpu_regs.cs_ar`` ...).  On input every integer may also be a string in any Python literal base
("0x10", "0b1", "16"), and missing fields are 0, so a file needs only the registers it sets.
Unknown keys are an error that names the key (a typo must not silently become 0).
"""

from __future__ import annotations

import ctypes
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Final

from acrn import uapi
from acrn.arch import GPR_NAMES

SELECTOR_NAMES: Final = ("cs_sel", "ss_sel", "ds_sel", "es_sel", "fs_sel", "gs_sel", "ldt_sel", "tr_sel")
U64_NAMES: Final = ("rip", "cs_base", "cr0", "cr4", "cr3", "ia32_efer", "rflags")


class RegsFormatError(ValueError):
    """A register file or blob that cannot be decoded; the message names the field."""


def _int(value: Any, where: str, bits: int) -> int:
    if isinstance(value, bool):
        raise RegsFormatError(f"{where}: expected an integer, got a boolean")
    if isinstance(value, int):
        v = value
    elif isinstance(value, str):
        try:
            v = int(value.replace("_", ""), 0)
        except ValueError:
            raise RegsFormatError(f"{where}: {value!r} is not an integer") from None
    else:
        raise RegsFormatError(f"{where}: expected an integer or a string, got {type(value).__name__}")
    if not 0 <= v < (1 << bits):
        raise RegsFormatError(f"{where}: {v:#x} does not fit in {bits} bits")
    return v


def _ints(value: Any, where: str, bits: int, count: int) -> list[int]:
    if not isinstance(value, list) or len(value) != count:
        raise RegsFormatError(f"{where}: expected a list of {count} integers")
    return [_int(v, f"{where}[{i}]", bits) for i, v in enumerate(value)]


def _check_keys(d: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise RegsFormatError(f"{where or 'top level'}: expected an object")
    for k in d:
        if k not in allowed:
            raise RegsFormatError(f"{where + '.' if where else ''}{k}: unknown field")
    return d


@dataclass
class DescriptorPtr:
    """``acrn_descriptor_ptr``: GDTR/IDTR image with its reserved words."""

    base: int = 0
    limit: int = 0
    reserved: list[int] = field(default_factory=lambda: [0, 0, 0])


@dataclass
class VcpuRegs:
    """Every field of ``acrn_vcpu_regs``, flattened (``vcpu_regs.gprs.rax`` is ``.rax``)."""

    vcpu_id: int = 0
    reserved: list[int] = field(default_factory=lambda: [0, 0, 0])
    rax: int = 0
    rcx: int = 0
    rdx: int = 0
    rbx: int = 0
    rsp: int = 0
    rbp: int = 0
    rsi: int = 0
    rdi: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    gdt: DescriptorPtr = field(default_factory=DescriptorPtr)
    idt: DescriptorPtr = field(default_factory=DescriptorPtr)
    rip: int = 0
    cs_base: int = 0
    cr0: int = 0
    cr4: int = 0
    cr3: int = 0
    ia32_efer: int = 0
    rflags: int = 0
    reserved_64: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    cs_ar: int = 0
    cs_limit: int = 0
    reserved_32: list[int] = field(default_factory=lambda: [0, 0, 0])
    cs_sel: int = 0
    ss_sel: int = 0
    ds_sel: int = 0
    es_sel: int = 0
    fs_sel: int = 0
    gs_sel: int = 0
    ldt_sel: int = 0
    tr_sel: int = 0

    # ---------------------------------------------------------------- C structure
    def to_struct(self) -> uapi.acrn_vcpu_regs:
        """Encode into the C structure (raises RegsFormatError on a value that does not fit)."""
        self.validate_ranges()
        s = uapi.acrn_vcpu_regs()
        s.vcpu_id = self.vcpu_id
        s.reserved[:] = self.reserved
        r = s.vcpu_regs
        for n in GPR_NAMES:
            setattr(r.gprs, n, getattr(self, n))
        for name in ("gdt", "idt"):
            dst = getattr(r, name)
            src: DescriptorPtr = getattr(self, name)
            dst.base, dst.limit = src.base, src.limit
            dst.reserved[:] = src.reserved
        for n in U64_NAMES:
            setattr(r, n, getattr(self, n))
        r.reserved_64[:] = self.reserved_64
        r.cs_ar, r.cs_limit = self.cs_ar, self.cs_limit
        r.reserved_32[:] = self.reserved_32
        for n in SELECTOR_NAMES:
            setattr(r, n, getattr(self, n))
        return s

    @classmethod
    def from_struct(cls, s: uapi.acrn_vcpu_regs) -> VcpuRegs:
        r = s.vcpu_regs
        v = cls(vcpu_id=s.vcpu_id, reserved=list(s.reserved))
        for n in GPR_NAMES:
            setattr(v, n, int(getattr(r.gprs, n)))
        for name in ("gdt", "idt"):
            src = getattr(r, name)
            setattr(v, name, DescriptorPtr(int(src.base), int(src.limit), list(src.reserved)))
        for n in U64_NAMES:
            setattr(v, n, int(getattr(r, n)))
        v.reserved_64 = list(r.reserved_64)
        v.cs_ar, v.cs_limit = int(r.cs_ar), int(r.cs_limit)
        v.reserved_32 = list(r.reserved_32)
        for n in SELECTOR_NAMES:
            setattr(v, n, int(getattr(r, n)))
        return v

    def to_bytes(self) -> bytes:
        """The exact 296-byte blob the ioctl passes (tail padding of acrn_regs is zero)."""
        return bytes(self.to_struct())

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> VcpuRegs:
        size = ctypes.sizeof(uapi.acrn_vcpu_regs)
        if len(blob) != size:
            raise RegsFormatError(f"blob: acrn_vcpu_regs is {size} bytes, got {len(blob)}")
        return cls.from_struct(uapi.acrn_vcpu_regs.from_buffer_copy(bytes(blob)))

    # ---------------------------------------------------------------- JSON
    def to_json_dict(self, *, hex_values: bool = False) -> dict[str, Any]:
        """Nested dict with the C field names; ``hex_values`` renders integers as hex strings."""

        def f(v: int) -> int | str:
            return f"{v:#x}" if hex_values else v

        regs: dict[str, Any] = {"gprs": {n: f(getattr(self, n)) for n in GPR_NAMES}}
        for name in ("gdt", "idt"):
            d: DescriptorPtr = getattr(self, name)
            regs[name] = {"limit": f(d.limit), "base": f(d.base), "reserved": [f(x) for x in d.reserved]}
        for n in U64_NAMES:
            regs[n] = f(getattr(self, n))
        regs["reserved_64"] = [f(x) for x in self.reserved_64]
        regs["cs_ar"] = f(self.cs_ar)
        regs["cs_limit"] = f(self.cs_limit)
        regs["reserved_32"] = [f(x) for x in self.reserved_32]
        for n in SELECTOR_NAMES:
            regs[n] = f(getattr(self, n))
        return {"vcpu_id": self.vcpu_id, "reserved": [f(x) for x in self.reserved], "vcpu_regs": regs}

    @classmethod
    def from_json_dict(cls, d: Any) -> VcpuRegs:
        """Parse the JSON form; names the offending field on any error."""
        top = _check_keys(d, ("vcpu_id", "reserved", "vcpu_regs"), "")
        v = cls()
        if "vcpu_id" in top:
            v.vcpu_id = _int(top["vcpu_id"], "vcpu_id", 16)
        if "reserved" in top:
            v.reserved = _ints(top["reserved"], "reserved", 16, 3)
        allowed = ("gprs", "gdt", "idt", *U64_NAMES, "reserved_64", "cs_ar", "cs_limit", "reserved_32",
                   *SELECTOR_NAMES)  # fmt: skip
        regs = _check_keys(top.get("vcpu_regs", {}), allowed, "vcpu_regs")
        gprs = _check_keys(regs.get("gprs", {}), GPR_NAMES, "vcpu_regs.gprs")
        for n, val in gprs.items():
            setattr(v, n, _int(val, f"vcpu_regs.gprs.{n}", 64))
        for name in ("gdt", "idt"):
            where = f"vcpu_regs.{name}"
            t = _check_keys(regs.get(name, {}), ("limit", "base", "reserved"), where)
            dp = DescriptorPtr()
            if "limit" in t:
                dp.limit = _int(t["limit"], f"{where}.limit", 16)
            if "base" in t:
                dp.base = _int(t["base"], f"{where}.base", 64)
            if "reserved" in t:
                dp.reserved = _ints(t["reserved"], f"{where}.reserved", 16, 3)
            setattr(v, name, dp)
        for n in U64_NAMES:
            if n in regs:
                setattr(v, n, _int(regs[n], f"vcpu_regs.{n}", 64))
        if "reserved_64" in regs:
            v.reserved_64 = _ints(regs["reserved_64"], "vcpu_regs.reserved_64", 64, 4)
        for n in ("cs_ar", "cs_limit"):
            if n in regs:
                setattr(v, n, _int(regs[n], f"vcpu_regs.{n}", 32))
        if "reserved_32" in regs:
            v.reserved_32 = _ints(regs["reserved_32"], "vcpu_regs.reserved_32", 32, 3)
        for n in SELECTOR_NAMES:
            if n in regs:
                setattr(v, n, _int(regs[n], f"vcpu_regs.{n}", 16))
        return v

    def validate_ranges(self) -> None:
        """Check every value fits its C field (the JSON parser already does; this guards code)."""
        if self._ranges_fit():
            return
        # Something does not fit: the same checks again, field by field, for the error message.
        _int(self.vcpu_id, "vcpu_id", 16)
        _ints(self.reserved, "reserved", 16, 3)
        for n in GPR_NAMES:
            _int(getattr(self, n), f"vcpu_regs.gprs.{n}", 64)
        for name in ("gdt", "idt"):
            d: DescriptorPtr = getattr(self, name)
            _int(d.base, f"vcpu_regs.{name}.base", 64)
            _int(d.limit, f"vcpu_regs.{name}.limit", 16)
            _ints(d.reserved, f"vcpu_regs.{name}.reserved", 16, 3)
        for n in U64_NAMES:
            _int(getattr(self, n), f"vcpu_regs.{n}", 64)
        _ints(self.reserved_64, "vcpu_regs.reserved_64", 64, 4)
        _int(self.cs_ar, "vcpu_regs.cs_ar", 32)
        _int(self.cs_limit, "vcpu_regs.cs_limit", 32)
        _ints(self.reserved_32, "vcpu_regs.reserved_32", 32, 3)
        for n in SELECTOR_NAMES:
            _int(getattr(self, n), f"vcpu_regs.{n}", 16)

    def _ranges_fit(self) -> bool:
        """Whether every field holds an int (not a bool) that fits, and every list its length;
        the quick test :meth:`validate_ranges` makes before building any message."""
        lists = (self.reserved, self.gdt.reserved, self.idt.reserved, self.reserved_64, self.reserved_32)
        if [len(x) if type(x) is list else -1 for x in lists] != [3, 3, 3, 4, 3]:
            return False
        widths = (
            (16, (self.vcpu_id, *self.reserved, self.gdt.limit, *self.gdt.reserved, self.idt.limit,
                  *self.idt.reserved, *(getattr(self, n) for n in SELECTOR_NAMES))),
            (32, (self.cs_ar, self.cs_limit, *self.reserved_32)),
            (64, (*(getattr(self, n) for n in GPR_NAMES), self.gdt.base, self.idt.base,
                  *(getattr(self, n) for n in U64_NAMES), *self.reserved_64)),
        )  # fmt: skip
        for bits, values in widths:
            limit = 1 << bits
            for v in values:
                if type(v) is not int or not 0 <= v < limit:
                    return False
        return True

    def copy(self) -> VcpuRegs:
        return dataclasses.replace(
            self,
            reserved=list(self.reserved),
            gdt=dataclasses.replace(self.gdt, reserved=list(self.gdt.reserved)),
            idt=dataclasses.replace(self.idt, reserved=list(self.idt.reserved)),
            reserved_64=list(self.reserved_64),
            reserved_32=list(self.reserved_32),
        )
