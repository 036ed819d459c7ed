"""Errors raised by pyacrn's public API."""

from __future__ import annotations

import errno as _errno
import os
import re

_DESIGN_REF = re.compile(r"\s*\(spec [^)]*\)|[,;] spec \d[\d.]*(?: step \d+)?")


def without_design_refs(text: str) -> str:
    """``text`` without citations of design notes kept outside the repository (a parenthesised
    "spec" and a section number):
    user-facing messages point only at what a user can open (sources, the project's docs)."""
    return _DESIGN_REF.sub("", text)


class HsmError(OSError):
    """An HSM ioctl failed: carries the ``errno`` and the operation (ioctl name)."""

    def __init__(self, err: int, operation: str, detail: str = "") -> None:
        name = _errno.errorcode.get(err, str(err))
        msg = f"{operation}: {name} ({os.strerror(err)})"
        if detail:
            msg += f": {detail}"
        super().__init__(err, msg)
        self.operation = operation
        self.detail = detail

    def __str__(self) -> str:
        return str(self.strerror)
