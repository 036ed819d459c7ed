"""Booting a guest image the way acrn-dm does: layout, devices, ACPI, loader, BSP registers.

:func:`prepare_boot` takes a :class:`~acrn.dm.vmm.VmSession` whose lowmem is mapped at GPA 0 and
an :class:`ImageSpec`, and (devicemodel/core/main.c: main) maps the other RAM regions, registers the boot
devices (i8042, RTC/CMOS, ACPI PM; the session already has the 16550 UART and the debug-exit
port), writes the ACPI tables at 0xF2400, runs the loader acrn-dm would choose (vSBL > OVMF >
bzImage > ELF; pyacrn's vmlinux loader when asked for), and issues SET_VCPU_REGS for vCPU 0.  It
also installs the reload hook that acrn-dm's guest reset sequence runs (the loader again, then
SET_VCPU_REGS), so an i8042 0xFE reset reboots the guest.

:class:`ConsoleWatch` ends a run when the guest's console prints a marker (for tests and
benchmarks, e.g. ``Linux version``) and :class:`InteractiveConsole` feeds a terminal's keys to the
UART in raw mode, with QEMU's escapes: Ctrl-A h lists them, Ctrl-A x quits.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from acrn.dm import acpi
from acrn.dm.devices.acpi_pm import AcpiPm
from acrn.dm.devices.i8042 import I8042
from acrn.dm.devices.rtc import Rtc
from acrn.dm.loaders import GuestMemory, LoaderError, LoadResult, MemoryLayout
from acrn.dm.loaders.bzimage import load_bzimage
from acrn.dm.loaders.elf import load_elf
from acrn.dm.loaders.ovmf import firmware_image, load_ovmf
from acrn.dm.loaders.vmlinux import load_vmlinux
from acrn.regs.model import VcpuRegs

if TYPE_CHECKING:
    from acrn.dm.vmm import VmSession

log = logging.getLogger(__name__)


@dataclass
class ImageSpec:
    """What to boot; exactly one of kernel / elf / ovmf / vmlinux."""

    kernel: bytes | None = None  # bzImage (-k)
    elf: bytes | None = None  # ELF32 multiboot (-E)
    ovmf: bytes | None = None  # firmware ending at 4 GiB (--ovmf)
    vmlinux: bytes | None = None  # ELF64 through the 64-bit boot protocol (--vmlinux)
    ramdisk: bytes | None = None
    bootargs: str | None = None
    cpus: int = 1

    @property
    def loader(self) -> str:
        """acrn-dm's priority (``acrn_sw_load``): OVMF > bzImage > ELF; vmlinux is pyacrn's own."""
        given = [n for n in ("ovmf", "kernel", "elf", "vmlinux") if getattr(self, n) is not None]
        if not given:
            raise LoaderError("nothing to boot: give a kernel, an ELF, a firmware image or a vmlinux")
        if len(given) > 1 and "vmlinux" in given:
            raise LoaderError("--vmlinux cannot be combined with another image")
        return {"ovmf": "ovmf", "kernel": "bzimage", "elf": "elf", "vmlinux": "vmlinux"}[given[0]]

    def layout(self, memsize: int) -> MemoryLayout:
        bios = len(self.ovmf) if self.loader == "ovmf" and self.ovmf is not None else 0
        return MemoryLayout.from_memsize(memsize, biosmem=bios)


def run_loader(mem: GuestMemory, layout: MemoryLayout, spec: ImageSpec) -> LoadResult:
    """Run the chosen loader into ``mem`` (any GuestMemory)."""
    loader = spec.loader
    if loader == "ovmf":
        assert spec.ovmf is not None
        return load_ovmf(mem, layout, firmware_image(ovmf=spec.ovmf))
    if loader == "bzimage":
        assert spec.kernel is not None
        return load_bzimage(mem, layout, spec.kernel, ramdisk=spec.ramdisk, bootargs=spec.bootargs)
    if loader == "elf":
        assert spec.elf is not None
        return load_elf(mem, layout, spec.elf)
    assert spec.vmlinux is not None
    return load_vmlinux(mem, layout, spec.vmlinux, ramdisk=spec.ramdisk, bootargs=spec.bootargs)


@dataclass
class BootDevices:
    i8042: I8042
    rtc: Rtc
    pm: AcpiPm


def attach_boot_devices(session: VmSession, layout: MemoryLayout) -> BootDevices:
    """i8042, RTC/CMOS and ACPI PM on the session's bus, wired to its reset and stop requests."""
    devs = BootDevices(
        i8042=I8042(on_reset=session.request_reset),
        rtc=Rtc(lowmem=layout.lowmem, highmem=layout.highmem),
        pm=AcpiPm(
            on_poweroff=lambda: session.request_stop("poweroff", 0, "guest powered off (ACPI S5)"),
            on_reset=session.request_reset,
        ),
    )
    devs.i8042.attach(session.bus)
    devs.rtc.attach(session.bus)
    devs.pm.attach(session.bus)
    return devs


def prepare_boot(session: VmSession, spec: ImageSpec, memsize: int) -> LoadResult:
    """Map RAM, attach devices, write ACPI tables, load, SET_VCPU_REGS; install the reload hook.

    The session must have been created with ``mem_size = spec.layout(memsize).lowmem``.
    """
    layout = spec.layout(memsize)
    if session.mem_size != layout.lowmem:
        raise ValueError(
            f"session maps {session.mem_size:#x} bytes at 0, the layout wants {layout.lowmem:#x}"
        )
    for gpa, size in layout.regions()[1:]:
        session.map_ram(gpa, size)
    attach_boot_devices(session, layout)
    # The vCPUs' LAPIC IDs are their pCPUs' (ACRN's vlapic_init); pCPUs 1.. when the session left
    # the choice to the VM's configuration (the default platform's User VM pCPUs; the Service VM
    # reads the real ones from its own MADT).
    affinity = session.cpu_affinity or (((1 << spec.cpus) - 1) << 1)
    pcpus = [p for p in range(64) if affinity >> p & 1][: spec.cpus]
    acpi.install_acpi_tables(session, spec.cpus, pcpus if len(pcpus) == spec.cpus else None)
    result = run_loader(session, layout, spec)
    for note in result.notes:
        log.debug("%s: %s", result.loader, note)  # acrn run -v prints them itself
    session.set_regs(result.regs)

    def reload() -> VcpuRegs:
        log.info("guest reset: re-running the %s loader", result.loader)
        return run_loader(session, layout, spec).regs

    session.reload = reload
    return result


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
