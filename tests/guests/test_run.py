"""Every built-in guest runs on every available accelerator and does what its catalogue entry says.

The register state goes through the hypervisor core's landing (``acrn.emu.hv.land_vcpu_regs``), so
these runs also show that ACRN's landing rules (``set_vcpu_regs``) produce a state the CPU accepts.
"""

from __future__ import annotations

import threading

import pytest

from acrn.emu.accel.base import Accelerator, HaltExit, KickExit, PioExit, ShutdownExit
from acrn.guests import (
    COMPUTE_DEFAULT_COUNT,
    IO_LOOP_DEFAULT_COUNT,
    compute_output,
    debugexit_status,
    get,
    parse_probe,
)
from conftest import ACCELS, loaded_vcpu, run_guest

pytestmark = pytest.mark.parametrize("accel", ACCELS, indirect=True)

#: Known gaps of the soft (unicorn) accelerator, reported to its owner; xfail (not strict) there so
#: that a fix shows up as XPASS.
SOFT_NO_LIMIT_CHECKS = "unicorn does not check segment limits, so no #GP beyond DS.limit"


def soft_gap(request: pytest.FixtureRequest, accel: Accelerator, reason: str) -> None:
    """Mark the running test xfail when it runs on the soft accelerator."""
    if accel.name == "soft":
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=False))


HELLO = ["hello_real", "hello_protected", "hello_long"]


@pytest.mark.parametrize("name", HELLO)
def test_hello_guest_prints_its_line_and_halts(accel: Accelerator, name: str) -> None:
    g = get(name)
    r = run_guest(accel, g)
    assert r.output == g.expected_output
    assert isinstance(r.exit, HaltExit)
    assert not r.exit.interrupts_enabled  # cli; hlt


@pytest.mark.parametrize("name", HELLO)
def test_hello_guest_stays_in_the_mode_it_was_entered_in(accel: Accelerator, name: str) -> None:
    g = get(name)
    r = run_guest(accel, g)
    assert r.state.mode == g.mode


def test_probe_real_reports_real_mode_landing(accel: Accelerator) -> None:
    p = parse_probe(run_guest(accel, get("probe_real")).output)
    assert p["CR0"] == 0x30
    assert p["CR3"] == 0 and p["CR4"] == 0 and p["EFER"] == 0
    assert p["RFLAGS"] == 0x2  # rflags 0 lands as 0x2 (set_vcpu_regs)
    assert [p[s] for s in ("CS", "SS", "DS", "ES", "FS", "GS")] == [0] * 6
    assert (p["IDTR_BASE"], p["IDTR_LIMIT"]) == (0, 0x3FF)


def test_probe_real_ds_limit_is_64k(request: pytest.FixtureRequest, accel: Accelerator) -> None:
    soft_gap(request, accel, SOFT_NO_LIMIT_CHECKS)
    # set_vcpu_regs: with CR0.PE = 0 every data segment lands with limit 0xFFFF, so a 32-bit
    # address beyond it faults (#GP through the IVT the guest installed).
    p = parse_probe(run_guest(accel, get("probe_real")).output)
    assert p["DSLIMIT"] == "fault"


def test_probe_protected_reports_acrn_dm_landing(accel: Accelerator) -> None:
    g = get("probe_protected")
    p = parse_probe(run_guest(accel, g).output)
    assert p["CR0"] == 0x31
    assert p["EFER"] == 0 and p["RFLAGS"] == 0x2
    assert [p[s] for s in ("CS", "SS", "DS", "ES", "FS", "GS")] == [0x10, 0x18, 0x18, 0x18, 0, 0]
    assert p["GDTR_BASE"] == g.symbols()["gdt"] and p["GDTR_LIMIT"] == 31
    assert p["DSLIMIT"] == "ok"  # 4 GiB data limit when CR0.PE = 1


def test_probe_long_reports_long_mode_landing(accel: Accelerator) -> None:
    g = get("probe_long")
    p = parse_probe(run_guest(accel, g).output)
    assert p["CR0"] == 0x80000031
    assert p["CR3"] == g.symbols()["pml4"]
    assert p["CR4"] == 0x20
    assert p["EFER"] == 0x500
    assert p["CS"] == 0x10 and p["DS"] == 0x18
    assert p["DSLIMIT"] == "ok"


def test_probe_reports_rflags_with_arithmetic_flags_cleared(accel: Accelerator) -> None:
    # set_vcpu_regs: a non-zero rflags is masked with ~0x8D5 (CF, PF, AF, ZF, SF, OF cleared).
    g = get("probe_protected")
    regs = g.regs()
    regs.rflags = 0x8D7
    assert parse_probe(run_guest(accel, g, regs).output)["RFLAGS"] == 0x2


def test_compute_prints_count_and_sum(accel: Accelerator) -> None:
    g = get("compute")
    r = run_guest(accel, g)
    assert r.output == g.expected_output == compute_output(COMPUTE_DEFAULT_COUNT)
    assert isinstance(r.exit, HaltExit)


def test_compute_takes_its_count_from_ecx(accel: Accelerator) -> None:
    g = get("compute")
    assert run_guest(accel, g, g.regs(rcx=7)).output == compute_output(7)
    assert run_guest(accel, g, g.regs(rcx=0)).output == compute_output(0)


def test_io_loop_makes_one_exit_per_out(accel: Accelerator) -> None:
    r = run_guest(accel, get("io_loop"))
    assert r.other_writes == [(0x80, 1, n & 0xFF) for n in range(IO_LOOP_DEFAULT_COUNT, 0, -1)]
    assert isinstance(r.exit, HaltExit)
    assert r.output == ""


def test_io_loop_port_from_edx(accel: Accelerator) -> None:
    g = get("io_loop")
    r = run_guest(accel, g, g.regs(rcx=3, rdx=0x3F8))
    assert r.output == "\x03\x02\x01"


def test_debugexit_requests_status(accel: Accelerator) -> None:
    g = get("debugexit")
    r = run_guest(accel, g, g.regs(rax=0x21))
    assert isinstance(r.exit, PioExit) and r.exit.port == 0xF4
    assert r.debugexit_status == debugexit_status(0x21) == 0x43


def test_triple_fault_shuts_down(accel: Accelerator) -> None:
    # The soft CPU delivers no exceptions, and reports any exception as a shutdown (soft.py).
    r = run_guest(accel, get("triple_fault"))
    assert isinstance(r.exit, ShutdownExit)


def test_spin_runs_until_kicked(accel: Accelerator) -> None:
    g = get("spin")
    with loaded_vcpu(accel, g) as vcpu:
        result: list[object] = []
        t = threading.Thread(target=lambda: result.append(vcpu.run()))
        t.start()
        vcpu.kick()
        t.join(30)
        assert not t.is_alive()
        assert isinstance(result[0], KickExit)
        assert vcpu.get_state().rip == g.symbols()["start"]  # still inside `jmp .`


def test_running_a_guest_leaks_no_fds_or_threads(accel: Accelerator, no_leaks: None) -> None:
    assert run_guest(accel, get("hello_protected")).output == "hello from protected mode\n"
