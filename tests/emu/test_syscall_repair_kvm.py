"""The ``syscall_user`` guest on this host's KVM, with and without the SYSCALL repair.

With the fallback accelerator (repair decided by the probe) the guest must see architectural
SYSCALL/SYSRET whatever the host: kernel CS/SS on entry, RCX/R11 as the SDM defines, FMASK applied,
SWAPGS working, and a genuine user-mode #PF delivered as such afterwards.
"""

from __future__ import annotations

import os

import pytest

from acrn.device import EmulatedDevice
from acrn.dm.vmm import VmSession
from acrn.emu.accel import availability
from acrn.emu.accel.fallback import FallbackAccelerator, HybridAccelerator
from acrn.emu.accel.syscall_repair import parse_syscall_user, probe
from acrn.emu.machine import Machine
from acrn.guests import GUESTS

_ok, _why = availability("kvm")
pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not _ok, reason=f"needs /dev/kvm: {_why}")]

SYSCALL, FAULT, BP = 0, 1, 2


def run_guest(repair: bool | None, hybrid: bool = False) -> tuple[str, FallbackAccelerator]:
    g = GUESTS["syscall_user"]
    accel = (HybridAccelerator if hybrid else FallbackAccelerator)(syscall_repair=repair)
    machine = Machine(accel=accel)  # type: ignore[arg-type]
    try:
        with VmSession(
            mem_size=g.mem_size, device=EmulatedDevice(machine), accel=machine.runtime.accel_name
        ) as s:
            s.load(g.load_gpa, g.image())
            s.set_regs(g.regs())
            result = s.run(timeout=60)
    finally:
        machine.runtime.close()
    assert result.reason == "halt", result.summary()
    return result.output.decode(errors="replace"), accel


@pytest.mark.soft
@pytest.mark.parametrize("hybrid", [False, True], ids=["fallback", "hybrid"])
def test_syscall_and_sysret_are_architectural_with_the_fallback(hybrid: bool) -> None:
    # hybrid: the set-up (GDT, IDT, TSS, the SYSCALL MSRs) runs on the soft CPU and the int3 moves
    # the vCPU to KVM, so this also checks that the MSRs cross over.
    out, accel = run_guest(None, hybrid)
    records = parse_syscall_user(out)
    assert [r["kind"] for r in records] == [BP, SYSCALL, SYSCALL, FAULT], out
    first, second, fault = records[1], records[2], records[3]
    for n, rec in enumerate((first, second), start=1):
        assert rec["CS"] == 0x10 and rec["SS"] == 0x18, out  # STAR[47:32], + 8
        assert rec["RAX"] == n
        assert rec["R11"] == 0x202  # RFLAGS before SYSCALL
        assert rec["RFLAGS"] == 0x2  # FMASK 0x47700 cleared IF
        assert rec["GSBASE"] == 0x5000  # SWAPGS brought KERNEL_GS_BASE in
    # RCX is the return RIP: SYSRET went back there, the second SYSCALL is 7 bytes further
    # (mov $2,%eax; syscall) and the faulting user read right after it.
    assert second["RCX"] == first["RCX"] + 7
    assert fault["VECTOR"] == 14 and fault["CS"] == 0x33 and fault["RIP"] == second["RCX"]
    repaired = accel.stats.events.get("syscall (repaired)", 0)
    assert repaired == (2 if probe().needed else 0)


def test_without_the_repair_the_probe_diagnosis_is_what_the_guest_sees() -> None:
    out, accel = run_guest(False)
    records = parse_syscall_user(out)
    lstar = GUESTS["syscall_user"].symbols()["lstar"]
    broken = [r for r in records if r["kind"] == FAULT and r.get("RIP") == lstar and r["CS"] & 3 == 3]
    assert bool(broken) == probe().syscall_keeps_user_cs, out
    assert "syscall (repaired)" not in accel.stats.events


def test_the_probe_reports_this_host_and_leaks_nothing() -> None:
    fds = set(os.listdir("/proc/self/fd"))
    result = probe.__wrapped__()
    assert set(os.listdir("/proc/self/fd")) <= fds
    # Either int3 stopped the vCPU, or the guest's own #BP handler ran and printed.
    assert result.int3_exits != result.output.startswith("#BP\n")
    assert result == probe.__wrapped__()  # the same answer each time
