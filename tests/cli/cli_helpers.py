"""Driving the real ``acrn`` command in a subprocess or a pseudo-terminal, as a user meets it."""

from __future__ import annotations

import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

#: Real mode at 0x8000: print "READY\n" on COM1, then spin (jmp $).  Entered with --preset real.
READY_THEN_SPIN = bytes.fromhex("baf803be1080ac84c07403eeebf8ebfe") + b"READY\n\0"
#: Real mode at 0x8000: print 'A' on COM1 for ever.
SPAM = bytes.fromhex("baf803b041eeebfd")

#: Generous bound for anything a test waits for (the machine is shared and slow); never asserted on.
WAIT = 120.0

# A wrapper that makes /dev/kvm unusable for the command it runs (as on a host without KVM).
NO_KVM = (
    "import sys, acrn.emu.accel.kvm as k; k.KVM_DEVICE = '/nonexistent/kvm'; "
    "from acrn.cli import main; sys.exit(main(sys.argv[1:]))"
)


def acrn(*args: str, no_kvm: bool = False) -> list[str]:
    """The argv of ``acrn ARGS`` with this interpreter."""
    if no_kvm:
        return [sys.executable, "-c", NO_KVM, *args]
    return [sys.executable, "-m", "acrn", *args]


def run(*args: str, no_kvm: bool = False, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        acrn(*args, no_kvm=no_kvm), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def image(tmp_path: Path, name: str, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def bzimage(
    *, syssize: int = 0x100, init_size: int = 0x1000000, version: int = 0x020F, body: int = 0
) -> bytes:
    """A synthetic bzImage: setup header (4 setup sectors), ``body`` bytes after the setup."""
    setup = bytearray(5 * 512)
    setup[0x1F1] = 4
    struct.pack_into("<I", setup, 0x1F4, syssize)
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + bytes(body if body else syssize * 16)


def elf_debugexit(tmp_path: Path) -> str:
    """A static ELF32 that writes 0x2a to the debug-exit port and halts (for -E)."""
    code = bytes.fromhex("b02ae6f4f4")
    out = bytearray(0x100)
    out[:16] = b"\x7fELF\x01\x01\x01" + bytes(9)
    struct.pack_into("<HHIIIIIHHHHHH", out, 16, 2, 3, 1, 0x400000, 0x34, 0, 0, 0x34, 32, 1, 40, 0, 0)
    struct.pack_into("<8I", out, 0x34, 1, 0x100, 0x400000, 0x400000, len(code), len(code), 7, 0x1000)
    return image(tmp_path, "guest.elf", bytes(out) + code)


class Pty:
    """``acrn`` on a pseudo-terminal: its stdin, stdout and stderr are the terminal."""

    def __init__(self, *args: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become the command
            try:
                os.execv(sys.executable, acrn(*args))
            finally:
                os._exit(127)
        self.output = b""
        self.status: int | None = None

    def read_until(self, needle: bytes, timeout: float = WAIT) -> bytes:
        """Read until ``needle`` appears in the output so far (or the child ends / ``timeout``)."""
        deadline = time.monotonic() + timeout
        while needle not in self.output and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            self.output += data
        return self.output

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def attrs(self) -> list[object]:
        return termios.tcgetattr(self.fd)

    def kill(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = WAIT) -> int:
        """The exit status (128 + N if a signal killed it, as a shell reports)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read_until(b"\0never\0", timeout=0.2)
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(st)
                if self.status < 0:
                    self.status = 128 - self.status
                return self.status
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"acrn did not end within {timeout} s; output {self.output[-2000:]!r}")

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)
