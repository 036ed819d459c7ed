"""The ACPI tables a stock kernel needs, placed where acrn-dm places them (GPA 0xF2400).

RSDP (revision 2) -> XSDT -> FADT (-> FACS, DSDT) and MADT.  Enough for Linux to find the CPUs
(one Processor Local APIC entry per vCPU, APIC id = vCPU id), the IOAPIC at 0xFEC00000 (GSI base
0) with the ISA overrides IRQ 0 -> GSI 2 and the SCI (IRQ 9, level, active low), and to power off:
the FADT publishes acrn-dm's PM registers (:mod:`acrn.dm.devices.acpi_pm`) and the DSDT's
``\\_S5`` package gives SLP_TYP 5, so ``poweroff`` writes SLP_TYP 5 | SLP_EN to PM1a control.

The RSDP sits in the BIOS area [0xE0000, 1 MiB) on a 16-byte boundary, where Linux searches for
it, so no ``acpi_rsdp_addr`` is needed in the zero page (acrn-dm sets none).  The FADT does not
claim an i8042 (IAPC_BOOT_ARCH 8042 flag clear) so that Linux skips the slow keyboard-controller
probe; ``reboot=k`` still reaches the controller's reset command.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from typing import Final

from acrn.dm.devices import acpi_pm as pm
from acrn.dm.loaders import GuestMemory

ACPI_BASE: Final = 0xF2400
RSDP_GPA: Final = ACPI_BASE
XSDT_GPA: Final = ACPI_BASE + 0x080
MADT_GPA: Final = ACPI_BASE + 0x100
FADT_GPA: Final = ACPI_BASE + 0x300
FACS_GPA: Final = ACPI_BASE + 0x440
DSDT_GPA: Final = ACPI_BASE + 0x500

LAPIC_BASE: Final = 0xFEE00000
IOAPIC_BASE: Final = 0xFEC00000
IOAPIC_ID: Final = 0
OEM_ID: Final = b"ACRN  "
CMOS_CENTURY_INDEX: Final = 0x32

# FADT flags.
FADT_WBINVD: Final = 1 << 0
FADT_PROC_C1: Final = 1 << 2
FADT_PWR_BUTTON: Final = 1 << 4  # set: no fixed-feature power button
FADT_SLP_BUTTON: Final = 1 << 5
FADT_TMR_VAL_EXT: Final = 1 << 8
FADT_RESET_REG_SUP: Final = 1 << 10
FADT_LENGTH: Final = 276
GAS_SYSTEM_IO: Final = 1

#: AML: Name (_S5, Package () { 0x05, Zero })
S5_AML: Final = bytes([0x08, *b"_S5_", 0x12, 0x05, 0x02, 0x0A, pm.SLP_TYP_S5, 0x00])


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` sum to 0 modulo 256."""
    return (-sum(data)) & 0xFF


def _table(sig: bytes, revision: int, body: bytes) -> bytes:
    length = 36 + len(body)
    head = struct.pack("<4sIBB6s8sI4sI", sig, length, revision, 0, OEM_ID, b"ACRN" + sig, 1, b"PYAC", 1)
    raw = bytearray(head + body)
    raw[9] = checksum(bytes(raw))
    return bytes(raw)


def _gas(address: int, width_bits: int, access: int) -> bytes:
    return struct.pack("<BBBBQ", GAS_SYSTEM_IO if address else 0, width_bits, 0, access, address)


def rsdp() -> bytes:
    raw = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, 0, 36, XSDT_GPA, 0))
    raw[8] = checksum(bytes(raw[:20]))
    raw[32] = checksum(bytes(raw))
    return bytes(raw)


def xsdt(entries: list[int]) -> bytes:
    return _table(b"XSDT", 1, b"".join(struct.pack("<Q", e) for e in entries))


def madt(ncpu: int, apic_ids: Sequence[int] | None = None) -> bytes:
    """The MADT: one Local APIC per vCPU, with ``apic_ids`` (default 0..ncpu-1).

    On ACRN a vCPU's LAPIC ID is its pCPU's (hypervisor/arch/x86/guest/vlapic.c: vlapic_init),
    and acrn-dm writes those IDs here (hw/platform/acpi/acpi.c: basl_fwrite_madt); a guest whose
    MADT disagrees with its APIC ID register stops in Linux's setup_local_APIC.
    """
    ids = list(range(ncpu)) if apic_ids is None else list(apic_ids)
    if len(ids) != ncpu:
        raise ValueError(f"{len(ids)} APIC IDs for {ncpu} vCPUs")
    body = bytearray(struct.pack("<II", LAPIC_BASE, 1))  # PCAT_COMPAT: dual 8259s present
    for cpu, apic in enumerate(ids):
        body += struct.pack("<BBBBI", 0, 8, cpu, apic, 1)  # Processor Local APIC, enabled
    body += struct.pack("<BBBBII", 1, 12, IOAPIC_ID, 0, IOAPIC_BASE, 0)
    body += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)  # ISA IRQ 0 -> GSI 2 (the PIT)
    body += struct.pack("<BBBBIH", 2, 10, 0, pm.SCI_IRQ, pm.SCI_IRQ, 0x000F)  # SCI: level, active low
    body += struct.pack("<BBBHB", 4, 6, 0xFF, 0x0005, 1)  # Local APIC NMI on LINT1, all CPUs
    return _table(b"APIC", 4, bytes(body))


def fadt() -> bytes:
    b = bytearray(FADT_LENGTH - 36)

    def put(fmt: str, off: int, *v: int | bytes) -> None:
        struct.pack_into("<" + fmt, b, off - 36, *v)

    put("I", 36, 0)  # FIRMWARE_CTRL: 0 because X_FIRMWARE_CTRL is used (ACPI 6: not both)
    put("I", 40, DSDT_GPA)
    put("H", 46, pm.SCI_IRQ)
    put("I", 48, pm.SMI_CMD_PORT)
    put("BB", 52, pm.ACPI_ENABLE, pm.ACPI_DISABLE)
    put("I", 56, pm.PM1A_EVT_PORT)
    put("I", 64, pm.PM1A_CNT_PORT)
    put("I", 76, pm.PM_TMR_PORT)
    put("BBBB", 88, pm.PM1A_EVT_LEN, pm.PM1A_CNT_LEN, 0, pm.PM_TMR_LEN)
    put("HH", 96, 101, 1001)  # C2/C3 not supported
    put("B", 108, CMOS_CENTURY_INDEX)
    put("H", 109, 0)  # IAPC_BOOT_ARCH: no legacy devices / 8042 advertised (see module doc)
    put(
        "I",
        112,
        FADT_WBINVD
        | FADT_PROC_C1
        | FADT_PWR_BUTTON
        | FADT_SLP_BUTTON
        | FADT_TMR_VAL_EXT
        | FADT_RESET_REG_SUP,
    )
    b[116 - 36 : 128 - 36] = _gas(pm.RESET_PORT, 8, 1)
    put("B", 128, pm.RESET_VALUE)
    put("B", 131, 1)  # FADT minor version (6.1)
    put("QQ", 132, FACS_GPA, DSDT_GPA)
    b[148 - 36 : 160 - 36] = _gas(pm.PM1A_EVT_PORT, 8 * pm.PM1A_EVT_LEN, 2)
    b[172 - 36 : 184 - 36] = _gas(pm.PM1A_CNT_PORT, 8 * pm.PM1A_CNT_LEN, 2)
    b[208 - 36 : 220 - 36] = _gas(pm.PM_TMR_PORT, 8 * pm.PM_TMR_LEN, 3)
    return _table(b"FACP", 6, bytes(b))


def facs() -> bytes:
    # FACS has no checksum: signature, length 64, hardware signature, waking vectors, version 2.
    return struct.pack("<4sIIIIIQB31x", b"FACS", 64, 0, 0, 0, 0, 0, 2)


def dsdt() -> bytes:
    return _table(b"DSDT", 2, S5_AML)


def acpi_tables(ncpu: int, apic_ids: Sequence[int] | None = None) -> dict[int, bytes]:
    """GPA -> bytes of every table for a VM with ``ncpu`` vCPUs (LAPIC IDs ``apic_ids``)."""
    if not 1 <= ncpu <= 255:
        raise ValueError(f"ncpu {ncpu}: the MADT takes 1 to 255 local APICs")
    tables = {
        RSDP_GPA: rsdp(),
        XSDT_GPA: xsdt([FADT_GPA, MADT_GPA]),
        MADT_GPA: madt(ncpu, apic_ids),
        FADT_GPA: fadt(),
        FACS_GPA: facs(),
        DSDT_GPA: dsdt(),
    }
    ordered = sorted(tables.items())
    for (gpa, data), (nxt, _) in itertools.pairwise(ordered):
        assert gpa + len(data) <= nxt, f"ACPI table at {gpa:#x} overlaps the next"
    return tables


def install_acpi_tables(
    mem: GuestMemory, ncpu: int, apic_ids: Sequence[int] | None = None
) -> dict[int, bytes]:
    """Write the tables into guest memory (which must back [0xF2400, 0xF3000)); returns them."""
    tables = acpi_tables(ncpu, apic_ids)
    for gpa, data in tables.items():
        mem.write(gpa, data)
    return tables
