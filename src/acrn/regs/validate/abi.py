"""Level ``abi``: what the HSM driver rejects with ``-EINVAL`` before any hypercall.

The reserved fields of ``struct acrn_vcpu_regs``, in the driver's order
(``drivers/virt/acrn/hsm.c: acrn_dev_ioctl``).
"""

from __future__ import annotations

from collections.abc import Iterator

from acrn.regs.validate.core import SRC_HSM, Context, Hit, rule


def _nonzero(values: list[int], path: str) -> list[str]:
    return [f"{path}[{i}]" for i, v in enumerate(values) if v]


def _abi_hit(fields: list[str], what: str, values: list[int]) -> Iterator[Hit]:
    if fields:
        shown = ", ".join(f"{f} = {v:#x}" for f, v in zip(fields, [v for v in values if v], strict=True))
        yield Hit(fields, f"{shown}: the HSM driver rejects a non-zero {what} with -EINVAL")


@rule("abi.reserved", "abi", SRC_HSM)
def _abi_reserved(c: Context) -> Iterator[Hit]:
    """acrn_vcpu_regs.reserved[0..2] must be 0 (checked first)."""
    yield from _abi_hit(_nonzero(c.regs.reserved, "reserved"), "reserved word", c.regs.reserved)


@rule("abi.reserved_32", "abi", SRC_HSM)
def _abi_reserved_32(c: Context) -> Iterator[Hit]:
    """vcpu_regs.reserved_32[0..2] must be 0 (checked second)."""
    r = c.regs.reserved_32
    yield from _abi_hit(_nonzero(r, "vcpu_regs.reserved_32"), "reserved_32 word", r)


@rule("abi.reserved_64", "abi", SRC_HSM)
def _abi_reserved_64(c: Context) -> Iterator[Hit]:
    """vcpu_regs.reserved_64[0..3] must be 0 (checked third)."""
    r = c.regs.reserved_64
    yield from _abi_hit(_nonzero(r, "vcpu_regs.reserved_64"), "reserved_64 word", r)


@rule("abi.descriptor_reserved", "abi", SRC_HSM)
def _abi_descriptor_reserved(c: Context) -> Iterator[Hit]:
    """gdt.reserved[i] | idt.reserved[i] must be 0 for i in 0..2 (checked last, GDT and IDT together)."""
    fields: list[str] = []
    values: list[int] = []
    for i in range(3):
        for name in ("gdt", "idt"):
            v = getattr(c.regs, name).reserved[i]
            if v:
                fields.append(f"vcpu_regs.{name}.reserved[{i}]")
                values.append(v)
    yield from _abi_hit(fields, "GDT/IDT reserved word", values)
