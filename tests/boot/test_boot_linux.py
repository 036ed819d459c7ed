"""A stock Debian kernel booted through the HSM interface as acrn-dm boots it
(``devicemodel/core/sw_load_bzimage.c: acrn_sw_load_bzimage``).

``boot`` (runs in CI): the cloud bzImage with ``console=ttyS0 earlyprintk=serial,ttyS0`` must print
its ``Linux version`` line through pyacrn's 16550 UART.  The hybrid accelerator runs the
decompressor on the soft CPU and the kernel on KVM (the decompressor alone takes ~85 s of this
machine's KVM); the run is bounded by ``BOOT_TIMEOUT`` and reports how long it took.

``slow`` (``-m slow``): kernel + busybox initramfs to the init marker and a clean ACPI power-off
(about 10 minutes here: the kernel reaches ``Run /init`` after ~470 s of this KVM's ~1 M
instructions/s).  On the development machines' KVM (kvm_pvm) a user-mode SYSCALL arrives at LSTAR
with the user CS/SS still loaded, so init would die on its first system call; the fallback's
SYSCALL repair (acrn.emu.accel.syscall_repair) must have completed every one of init's system calls.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from acrn.device import EmulatedDevice
from acrn.dm.boot import prepare_boot
from acrn.dm.console import ConsoleWatch
from acrn.dm.loaders.image import ImageSpec
from acrn.dm.vmm import RunResult, VmSession
from acrn.emu.accel.fallback import FallbackStats, HybridAccelerator
from acrn.emu.accel.syscall_repair import probe
from acrn.emu.machine import Machine

BOOT_TIMEOUT = 240.0
INIT_TIMEOUT = 3600.0
#: The init test: crypto self-tests off, and CPU features whose instructions this KVM cannot emulate
#: cleared (pclmulqdq, ssse3, sse4.1, sse4.2, popcnt, aes, smap: X86_FEATURE numbers), so that the
#: kernel picks code paths that need no fallback (README.md, "Booting Linux").
INIT_CMDLINE = "panic=-1 cryptomgr.notests clearcpuid=129,137,147,148,151,153,308"
#: What the kernel prints when a user-mode SYSCALL arrived with CPL 3 (see the module doc).
SYSCALL_FAULT = "RIP: 0033:entry_SYSCALL_64"
MEMSIZE = 256 << 20
CMDLINE = "console=ttyS0 earlyprintk=serial,ttyS0 nokaslr noxsave"


class Booted:
    def __init__(
        self, result: RunResult, stats: FallbackStats, seconds: float, marker_at: float | None
    ) -> None:
        self.result = result
        self.stats = stats
        self.seconds = seconds
        self.marker_at = marker_at
        self.console = result.output.decode(errors="replace")


def boot(
    guest: Path,
    bootargs: str,
    marker: bytes | None,
    timeout: float,
    ramdisk: bool = False,
    vmlinux: bool = False,
) -> Booted:
    accel = HybridAccelerator()
    machine = Machine(accel=accel)  # type: ignore[arg-type]
    image = (guest / ("vmlinux" if vmlinux else "vmlinuz")).read_bytes()
    spec = ImageSpec(
        kernel=None if vmlinux else image,
        vmlinux=image if vmlinux else None,
        ramdisk=(guest / "initramfs.cpio").read_bytes() if ramdisk else None,
        bootargs=bootargs,
    )
    lowmem = spec.layout(MEMSIZE).lowmem
    watch = ConsoleWatch(None, marker)
    t0 = time.monotonic()
    try:
        with VmSession(
            mem_size=lowmem,
            device=EmulatedDevice(machine),
            accel=machine.runtime.accel_name,
            console=watch,
            cpu_affinity=0b10,  # one vCPU, as the MADT says
        ) as session:
            watch.session = session
            session.no_reboot = True
            prepare_boot(session, spec, MEMSIZE)
            result = session.run(timeout=timeout)
    finally:
        machine.runtime.close()
    return Booted(
        result, accel.stats, time.monotonic() - t0, None if watch.seen_at is None else watch.seen_at - t0
    )


@pytest.mark.boot
@pytest.mark.kvm
@pytest.mark.soft
def test_debian_kernel_prints_linux_version_through_the_uart(linux_guest: Path) -> None:
    b = boot(linux_guest, CMDLINE, b"Linux version", BOOT_TIMEOUT)
    print(f"'Linux version' after {b.marker_at} s (run {b.seconds:.1f} s); {b.stats.summary()}")
    assert b.result.reason == "marker", f"{b.result.summary()}\n--- console ---\n{b.console[-2000:]}"
    assert "Linux version 6." in b.console or "Linux version" in b.console
    assert b.result.status == 0


@pytest.mark.boot
@pytest.mark.kvm
@pytest.mark.soft
def test_uncompressed_vmlinux_boots_through_the_64_bit_protocol(linux_guest: Path) -> None:
    if not (linux_guest / "vmlinux").is_file():
        pytest.skip("no vmlinux extracted (needs the lz4 tool when fetching)")
    b = boot(linux_guest, CMDLINE, b"Linux version", BOOT_TIMEOUT, vmlinux=True)
    print(f"vmlinux: 'Linux version' after {b.marker_at} s; {b.stats.summary()}")
    assert b.result.reason == "marker", f"{b.result.summary()}\n--- console ---\n{b.console[-2000:]}"


@pytest.mark.boot
@pytest.mark.slow
@pytest.mark.kvm
@pytest.mark.soft
def test_debian_kernel_and_initramfs_reach_init_and_power_off(linux_guest: Path) -> None:
    b = boot(linux_guest, f"{CMDLINE} {INIT_CMDLINE}", None, INIT_TIMEOUT, ramdisk=True)
    print(f"run {b.seconds:.1f} s: {b.result.summary()}; {b.stats.summary()}")
    assert SYSCALL_FAULT not in b.console, f"a SYSCALL arrived unrepaired:\n{b.console[-3000:]}"
    assert "GUEST-INIT-OK" in b.console, f"{b.result.summary()}\n--- console ---\n{b.console[-3000:]}"
    assert b.result.reason == "poweroff" and b.result.status == 0, b.result.summary()
    repaired = b.stats.events.get("syscall (repaired)", 0)
    assert (repaired > 0) == probe().needed, b.stats.summary()
