"""Errors raised by pyacrn's public API."""

from __future__ import annotations

import errno as _errno
import os


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
