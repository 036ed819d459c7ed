"""Booting a guest image the way acrn-dm does: layout, devices, ACPI, loader, BSP registers.

:func:`prepare_boot` takes a :class:`~acrn.dm.vmm.VmSession` whose lowmem is mapped at GPA 0 and
an :class:`~acrn.dm.loaders.image.ImageSpec`, and (devicemodel/core/main.c: main) maps the other RAM
regions, registers the boot devices (:func:`attach_boot_devices`: i8042, RTC/CMOS, ACPI PM, as
``vm_init_vdevs``; the session already has the 16550 UART and the debug-exit port), writes the ACPI
tables at 0xF2400, runs the loader acrn-dm would choose (vSBL > OVMF > bzImage > ELF; pyacrn's
vmlinux loader when asked for), and issues SET_VCPU_REGS for vCPU 0.  It also installs the reload
hook that acrn-dm's guest reset sequence runs (the loader again, then SET_VCPU_REGS), so an i8042
0xFE reset reboots the guest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from acrn.dm import acpi
from acrn.dm.devices.acpi_pm import AcpiPm
from acrn.dm.devices.i8042 import I8042
from acrn.dm.devices.rtc import Rtc
from acrn.dm.loaders import LoadResult, MemoryLayout
from acrn.dm.loaders.image import ImageSpec, run_loader
from acrn.regs.model import VcpuRegs

if TYPE_CHECKING:
    from acrn.dm.vmm import VmSession

log = logging.getLogger(__name__)


@dataclass
class BootDevices:
    """The devices :func:`attach_boot_devices` put on the bus, for a caller that inspects them."""

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
