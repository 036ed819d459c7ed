"""Whole-stack boots of tiny ELF32 guests: acrn-dm's reset sequence (i8042 0xFE), --no-reboot, S5 power-off.

The guests are loaded by the ELF loader through :func:`acrn.dm.boot.prepare_boot`, so the
devices, the ACPI tables and the reload hook are the ones ``acrn run -E`` uses.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from acrn.device import EmulatedDevice
from acrn.dm.boot import prepare_boot
from acrn.dm.loaders.image import ImageSpec
from acrn.dm.vmm import RunResult, VmSession
from acrn.emu.machine import Machine

MEMSIZE = 16 << 20
ENTRY = 0x400000
# inc dword [0x9000]; cmp dword [0x9000], 2; je done; mov al, 0xfe; out 0x64, al; hlt;
# done: mov al, 0x2a; out 0xf4, al; hlt
RESET_TWICE = bytes.fromhex("ff0500900000833d00900000027405b0fee664f4b02ae6f4f4")
# mov dx, 0x404; mov ax, (5 << 10) | (1 << 13); out dx, ax; hlt
POWEROFF = bytes.fromhex("66ba040466b8003466eff4")


def elf32(code: bytes) -> bytes:
    out = bytearray(0x100)
    out[:16] = b"\x7fELF\x01\x01\x01" + bytes(9)
    struct.pack_into("<HHIIIIIHHHHHH", out, 16, 2, 3, 1, ENTRY, 0x34, 0, 0, 0x34, 32, 1, 40, 0, 0)
    struct.pack_into("<8I", out, 0x34, 1, 0x100, ENTRY, ENTRY, len(code), len(code), 7, 0x1000)
    return bytes(out) + code


@pytest.fixture(
    params=[pytest.param("soft", marks=pytest.mark.soft), pytest.param("kvm", marks=pytest.mark.kvm)]
)
def machine(request: pytest.FixtureRequest) -> Iterator[Machine]:
    m = Machine(accel=request.param)
    yield m
    m.runtime.close()


def _boot(machine: Machine, code: bytes, no_reboot: bool = False) -> tuple[RunResult, int]:
    with VmSession(
        mem_size=MEMSIZE, device=EmulatedDevice(machine), accel=machine.runtime.accel_name, cpu_affinity=0b10
    ) as s:
        s.no_reboot = no_reboot
        prepare_boot(s, ImageSpec(elf=elf32(code)), MEMSIZE)
        result = s.run(timeout=60)
        return result, s.resets


def test_i8042_reset_runs_acrn_dm_reset_sequence_and_guest_boots_again(machine: Machine) -> None:
    result, resets = _boot(machine, RESET_TWICE)
    assert resets == 1
    assert (result.reason, result.status) == ("debugexit", (0x2A << 1) | 1)


def test_no_reboot_ends_the_vm_on_guest_reset(machine: Machine) -> None:
    result, resets = _boot(machine, RESET_TWICE, no_reboot=True)
    assert resets == 0
    assert (result.reason, result.status) == ("reset", 0)


def test_acpi_s5_power_off_ends_the_vm_with_status_0(machine: Machine) -> None:
    result, _ = _boot(machine, POWEROFF)
    assert (result.reason, result.status) == ("poweroff", 0)
