"""acrn.emu.accel.kvm_irq is byte-for-byte <linux/kvm.h>: sizes, offsets, ioctl numbers, constants.

The same method as test_kvm_layout.py: a C probe generated from the Python definitions is compiled
with gcc against the system header and its output compared with the Python values.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from acrn.emu.accel import kvm_irq as ki

HEADER = Path("/usr/include/linux/kvm.h")
pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or not HEADER.exists(),
    reason="needs gcc and <linux/kvm.h> (Debian package linux-libc-dev)",
)


def _fields(ctype: type[ctypes.Structure | ctypes.Union], prefix: str = "") -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    for name, ftype, *_ in ctype._fields_:
        desc = getattr(ctype, name)
        path = f"{prefix}{name}"
        out.append((path, desc.offset, desc.size))
        if isinstance(ftype, type) and issubclass(ftype, (ctypes.Structure, ctypes.Union)):
            out.extend((p, desc.offset + o, s) for p, o, s in _fields(ftype, path + "."))
    return out


def _probe() -> tuple[str, dict[str, int]]:
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <linux/kvm.h>", "int main(void) {"]
    expected: dict[str, int] = {}

    def emit(key: str, c_expr: str, value: int) -> None:
        lines.append(f'  printf("%s %llu\\n", "{key}", (unsigned long long)({c_expr}));')
        expected[key] = value

    for st in ki.STRUCTS:
        name = st.__name__
        emit(f"sizeof.{name}", f"sizeof(struct {name})", ctypes.sizeof(st))
        for path, off, size in _fields(st):
            emit(f"offsetof.{name}.{path}", f"offsetof(struct {name}, {path})", off)
            emit(f"sizeof.{name}.{path}", f"sizeof(((struct {name} *)0)->{path})", size)
    for n, v in ki.IOCTLS.items():
        emit(f"ioctl.{n}", n, v)
    for n, v in ki.CONSTANTS.items():
        emit(f"const.{n}", n, v)
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n", expected


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    src, _ = _probe()
    d = tmp_path_factory.mktemp("kvm_irq_probe")
    (d / "probe.c").write_text(src)
    subprocess.run(["gcc", "-o", str(d / "probe"), str(d / "probe.c")], check=True, capture_output=True)
    out = subprocess.run([str(d / "probe")], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_every_value_matches_the_header(compiled: dict[str, int]) -> None:
    _, expected = _probe()
    wrong = {k: (v, compiled.get(k)) for k, v in expected.items() if compiled.get(k) != v}
    assert not wrong, f"python vs C: {wrong}"


def test_the_probe_covers_the_ioctls_the_irqchip_uses() -> None:
    _, expected = _probe()
    for n in (
        "KVM_IRQ_LINE",
        "KVM_SIGNAL_MSI",
        "KVM_GET_MP_STATE",
        "KVM_SET_VCPU_EVENTS",
        "KVM_SET_GSI_ROUTING",
    ):
        assert f"ioctl.{n}" in expected
