"""Compile-and-compare probes: prove ctypes layouts and numbers equal to a C header.

A probe is generated from the Python definitions themselves (so a field added, renamed or moved
on either side shows up), compiled with gcc against the system headers, run, and its printed
values returned for comparison.  Used by the acrn.h and kvm.h layout tests.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path


def struct_fields(
    ctype: type[ctypes.Structure | ctypes.Union], c_prefix: str = "", py_prefix: str = ""
) -> list[tuple[str, str, int, int]]:
    """(C member path, Python path, offset, size) of every field, descending into nested types.

    An ``_anonymous_`` member (a C anonymous union) contributes no name to the C path.
    """
    out: list[tuple[str, str, int, int]] = []
    anonymous = set(getattr(ctype, "_anonymous_", ()))
    for name, ftype, *_ in ctype._fields_:
        desc = getattr(ctype, name)
        c_path = c_prefix.rstrip(".") if name in anonymous else f"{c_prefix}{name}"
        py_path = f"{py_prefix}{name}"
        out.append((c_path, py_path, desc.offset, desc.size))
        if isinstance(ftype, type) and issubclass(ftype, ctypes.Structure | ctypes.Union):
            inner = struct_fields(ftype, f"{c_path}." if c_path else "", f"{py_path}.")
            out.extend((c, p, desc.offset + off, size) for c, p, off, size in inner)
    return out


class CProbe:
    """Collects ``key -> (C expression, expected value)`` and runs them through gcc."""

    def __init__(self, *headers: str) -> None:
        self.headers = ("stddef.h", "stdio.h", *headers)
        self.expected: dict[str, int] = {}
        self._lines: list[str] = []

    def emit(self, key: str, c_expr: str, value: int) -> None:
        self._lines.append(f'  printf("%s %llu\\n", "{key}", (unsigned long long)({c_expr}));')
        self.expected[key] = value

    def struct(
        self, ctype: type[ctypes.Structure], *, alignment: bool = True, skip: frozenset[str] = frozenset()
    ) -> None:
        """sizeof, _Alignof and every field's offset and size of ``struct <name>``."""
        name = ctype.__name__
        self.emit(f"sizeof.{name}", f"sizeof(struct {name})", ctypes.sizeof(ctype))
        if alignment:
            self.emit(f"alignof.{name}", f"_Alignof(struct {name})", ctypes.alignment(ctype))
        for c_path, py_path, off, size in struct_fields(ctype):
            if not c_path or py_path.split(".")[0] in skip:
                continue
            self.emit(f"offsetof.{name}.{py_path}", f"offsetof(struct {name}, {c_path})", off)
            if size:  # a C flexible array member has no sizeof
                self.emit(f"sizeof.{name}.{py_path}", f"sizeof(((struct {name} *)0)->{c_path})", size)

    def source(self) -> str:
        includes = [f"#include <{h}>" for h in self.headers]
        return "\n".join([*includes, "int main(void) {", *self._lines, "  return 0;", "}"]) + "\n"

    def run(self, workdir: Path) -> dict[str, int]:
        """Compile (warnings are errors) and run; the values the C side printed."""
        (workdir / "probe.c").write_text(self.source())
        cc = subprocess.run(
            ["gcc", "-std=gnu11", "-Wall", "-Werror", "-o", str(workdir / "probe"), str(workdir / "probe.c")],
            capture_output=True,
            text=True,
        )
        assert cc.returncode == 0, cc.stderr
        out = subprocess.run([str(workdir / "probe")], check=True, capture_output=True, text=True).stdout
        return {k: int(v) for k, v in (line.rsplit(" ", 1) for line in out.splitlines())}

    def mismatches(
        self, got: dict[str, int], prefixes: tuple[str, ...] = ("",)
    ) -> dict[str, tuple[int, int | None]]:
        """Expected keys (with one of ``prefixes``) whose C value differs: key -> (python, C)."""
        return {
            k: (v, got.get(k)) for k, v in self.expected.items() if k.startswith(prefixes) and got.get(k) != v
        }
