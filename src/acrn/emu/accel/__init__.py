"""Accelerators: the engines that execute vCPUs, behind one interface, chosen by name in one table.

Two engines: ``kvm`` (/dev/kvm) and ``soft`` (unicorn).  Two wrappers over both (:mod:`.fallback`):
``fallback``, KVM that steps on the soft CPU what this KVM cannot emulate, and ``hybrid``, the soft
CPU until the first exception or interrupt, then the fallback.  :data:`TABLE` is where a name
becomes a class; :func:`wrapper_for` is the rule that puts a wrapper over KVM (``acrn run``,
``acrn hv``).

Modules are imported on demand so that importing pyacrn never loads unicorn or touches /dev/kvm.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Final

from acrn.emu.accel.base import Accelerator


@dataclass(frozen=True)
class Choice:
    """One accelerator name: the class that implements it and the engines it needs."""

    module: str
    cls: str
    #: Engines a wrapper runs on; empty for an engine itself.
    needs: tuple[str, ...] = ()

    @property
    def engine(self) -> bool:
        """An engine (``--accel``, ``acrn info``), not a wrapper over engines."""
        return not self.needs


#: Every accelerator by name; the engines first, in the order ``auto`` tries them.
TABLE: Final[dict[str, Choice]] = {
    "kvm": Choice("acrn.emu.accel.kvm", "KvmAccelerator"),
    "soft": Choice("acrn.emu.accel.soft", "SoftAccelerator"),
    "fallback": Choice("acrn.emu.accel.fallback", "FallbackAccelerator", needs=("kvm", "soft")),
    "hybrid": Choice("acrn.emu.accel.fallback", "HybridAccelerator", needs=("kvm", "soft")),
}

#: The engines (what ``--accel`` and ``acrn info`` name): name -> module path.
ACCELERATORS: Final = {name: c.module for name, c in TABLE.items() if c.engine}


def _class(name: str) -> type[Accelerator]:
    c = TABLE[name]
    cls: type[Accelerator] = getattr(importlib.import_module(c.module), c.cls)
    return cls


def get_accelerator(name: str) -> Accelerator:
    """An instance of the named accelerator (``auto``: KVM when it works, else soft)."""
    if name == "auto":
        for candidate in ACCELERATORS:
            ok, _ = availability(candidate)
            if ok:
                return get_accelerator(candidate)
        raise RuntimeError(
            "no accelerator available: " + "; ".join(f"{n}: {availability(n)[1]}" for n in ACCELERATORS)
        )
    if name not in TABLE:
        raise ValueError(f"unknown accelerator {name!r} (choose from auto, {', '.join(TABLE)})")
    ok, why = availability(name)
    if not ok:
        raise RuntimeError(f"accelerator {name} unavailable: {why}")
    return _class(name)()


def availability(name: str) -> tuple[bool, str]:
    """Whether the named accelerator can run here, with a one-line reason."""
    try:
        cls = _class(name)
    except ImportError as e:
        return False, f"not importable: {e}"
    ok, why = cls.available()
    return bool(ok), str(why)


def wrapper_for(accel: str, *, hybrid: bool, fallback: bool) -> str | None:
    """The wrapper to run KVM under for ``--accel accel``: ``hybrid``, ``fallback`` or None.

    A wrapper applies where KVM may be chosen (``accel`` is not ``soft``) and every engine it needs
    works here; ``hybrid`` wins over ``fallback``.  None: run ``accel`` itself.
    """
    if accel == "soft" or not (hybrid or fallback):
        return None
    name = "hybrid" if hybrid else "fallback"
    if not all(availability(n)[0] for n in TABLE[name].needs):
        return None
    return name
