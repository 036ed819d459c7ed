"""Accelerators: the engines that execute vCPUs (``kvm`` and ``soft``), behind one interface.

Modules are imported on demand so that importing pyacrn never loads unicorn or touches /dev/kvm.
"""

from __future__ import annotations

import importlib
from typing import Final

from acrn.emu.accel.base import Accelerator

#: name -> module path; each module exposes a class named ``ACCELERATOR``.
ACCELERATORS: Final = {"kvm": "acrn.emu.accel.kvm", "soft": "acrn.emu.accel.soft"}


def get_accelerator(name: str) -> Accelerator:
    """An instance of the named accelerator (``auto``: KVM when it works, else soft)."""
    if name == "auto":
        for candidate in ("kvm", "soft"):
            ok, _ = availability(candidate)
            if ok:
                return get_accelerator(candidate)
        raise RuntimeError(
            "no accelerator available: " + "; ".join(f"{n}: {availability(n)[1]}" for n in ACCELERATORS)
        )
    if name not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {name!r} (choose from auto, {', '.join(ACCELERATORS)})")
    ok, why = availability(name)
    if not ok:
        raise RuntimeError(f"accelerator {name} unavailable: {why}")
    mod = importlib.import_module(ACCELERATORS[name])
    acc: Accelerator = mod.ACCELERATOR()
    return acc


def availability(name: str) -> tuple[bool, str]:
    """Whether the named accelerator can run here, with a one-line reason."""
    try:
        mod = importlib.import_module(ACCELERATORS[name])
    except ImportError as e:
        return False, f"not importable: {e}"
    ok, why = mod.ACCELERATOR.available()
    return bool(ok), str(why)
