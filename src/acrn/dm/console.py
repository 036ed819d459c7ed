"""The guest's console as ``acrn run`` serves it: watch its output, feed it a terminal's keys.

:class:`ConsoleWatch` ends a run when the guest's console prints a marker (for tests and
benchmarks, e.g. ``Linux version``) and :class:`InteractiveConsole` feeds a terminal's keys to the
UART in raw mode (as acrn-dm's stdio backend puts a tty in raw mode:
devicemodel/hw/uart_core.c: uart_config_backend), with QEMU's escapes: Ctrl-A h lists them,
Ctrl-A x quits.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from acrn.dm.vmm import VmSession

log = logging.getLogger(__name__)


class ConsoleWatch:
    """A console sink that also ends the run when ``marker`` has been printed."""

    def __init__(
        self, session: VmSession | None, marker: bytes | None, echo: Callable[[bytes], None] | None = None
    ) -> None:
        self.session = session
        self.marker = marker
        self.echo = echo
        self.seen_at: float | None = None
        self._tail = b""

    def __call__(self, data: bytes) -> None:
        if self.echo is not None:
            self.echo(data)
        if self.marker is None or self.seen_at is not None:
            return
        window = self._tail + data
        if self.marker in window and self.session is not None:
            import time

            self.seen_at = time.monotonic()
            self.session.request_stop(
                "marker", 0, f"console printed {self.marker.decode(errors='replace')!r}"
            )
        self._tail = window[-len(self.marker) :]


ESCAPE_KEY = 0x01  # Ctrl-A, then a command key (QEMU's -nographic escape)


def terminal_notice(text: str) -> None:
    """A message on stderr that reads right on a terminal in raw mode ("\\n" does not return the carriage)."""
    sys.stderr.write(text.replace("\n", "\r\n") + "\r\n")
    sys.stderr.flush()


#: An escape command: (key, what it does, action).  ``x`` (quit) and Ctrl-A Ctrl-A are built in.
EscapeCommand = tuple[str, str, Callable[[], None]]


class InteractiveConsole:
    """stdin -> UART in raw mode while the guest runs, with QEMU's Ctrl-A escapes.

    Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A h prints the commands (to ``notice``);
    ``commands`` adds more (``acrn run``: p pauses and shows the registers, s prints a status).
    The terminal is restored on exit whatever ended the run (a signal handler that stops the
    session included: the caller leaves the ``with`` block normally).
    """

    def __init__(
        self,
        session: VmSession,
        fd: int | None = None,
        *,
        commands: list[EscapeCommand] | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.session = session
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.commands = {key: (text, action) for key, text, action in commands or []}
        self.notice = notice if notice is not None else terminal_notice
        self._saved: list[Any] | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, name="acrn-console", daemon=True)

    def help_text(self) -> str:
        lines = ["Ctrl-A h  this help", "Ctrl-A x  quit (ends the run, status 0)"]
        lines += [f"Ctrl-A {key}  {text}" for key, (text, _) in self.commands.items()]
        lines.append("Ctrl-A Ctrl-A  send Ctrl-A to the guest")
        return "\n".join(lines)

    def __enter__(self) -> InteractiveConsole:
        import termios
        import tty

        if os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            try:
                tty.setraw(self.fd)
            except BaseException:
                self.restore()
                raise
        self._thread.start()
        return self

    def restore(self) -> None:
        """Put the terminal back as it was (idempotent)."""
        import termios

        saved, self._saved = self._saved, None
        if saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def __exit__(self, *exc: object) -> None:
        try:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=2)
        finally:
            self.restore()
            os.close(self._stop_r)
            os.close(self._stop_w)

    def _escape(self, key: int) -> bool:
        """Run the command after Ctrl-A; True when the console must stop (quit)."""
        ch = chr(key).lower()
        if ch == "x":
            self.session.request_stop("quit", 0, "Ctrl-A x")
            return True
        if ch == "h" or ch == "?":
            self.notice(self.help_text())
        elif ch in self.commands:
            try:
                self.commands[ch][1]()
            except Exception as e:  # a console command must never end the console
                self.notice(f"[acrn] Ctrl-A {ch}: {e}")
                log.debug("console command %r failed", ch, exc_info=True)
        else:
            self.notice(f"[acrn] unknown escape Ctrl-A {ch!r}: Ctrl-A h lists the commands")
        return False

    def _loop(self) -> None:
        import select

        escape = False
        while True:
            ready, _, _ = select.select([self.fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            data = os.read(self.fd, 256)
            if not data:
                return
            out = bytearray()
            for b in data:
                if escape:
                    escape = False
                    if b == ESCAPE_KEY:
                        out.append(b)
                        continue
                    if out:
                        self.session.uart.feed(bytes(out))
                        out.clear()
                    if self._escape(b):
                        return
                    continue
                if b == ESCAPE_KEY:
                    escape = True
                    continue
                out.append(b)
            if out:
                self.session.uart.feed(bytes(out))
