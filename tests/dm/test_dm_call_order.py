"""acrn-dm's ioctl order for a normal boot (``devicemodel/core/main.c: main``), seen on the ``acrn.trace``
log.

CREATE_VM, then SET_MEMSEG for lowmem at GPA 0, the BIOS region below 4 GiB and highmem at 4 GiB
(in that order, attr 7), then SET_VCPU_REGS for vCPU 0 only, then CREATE_IOREQ_CLIENT and START_VM.
"""

from __future__ import annotations

import logging
import re
import struct
import time
from collections.abc import Iterator

import pytest

from acrn.device import EmulatedDevice
from acrn.dm.boot import prepare_boot
from acrn.dm.loaders import GiB, MiB
from acrn.dm.loaders.image import ImageSpec
from acrn.dm.vmm import VmSession
from acrn.emu.machine import Machine

ENTRY = 0x400000
# mov al, 0x2a; out 0xf4, al; hlt
DEBUGEXIT_42 = bytes.fromhex("b02ae6f4f4")


def elf32(code: bytes) -> bytes:
    out = bytearray(0x100)
    out[:16] = b"\x7fELF\x01\x01\x01" + bytes(9)
    struct.pack_into("<HHIIIIIHHHHHH", out, 16, 2, 3, 1, ENTRY, 0x34, 0, 0, 0x34, 32, 1, 40, 0, 0)
    struct.pack_into("<8I", out, 0x34, 1, 0x100, ENTRY, ENTRY, len(code), len(code), 7, 0x1000)
    return bytes(out) + code


class Calls(logging.Handler):
    """Collects (ioctl name, decoded argument) from the strace-like ``acrn.trace`` records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.calls: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) >= 2:
            self.calls.append((str(args[0]).removeprefix("ACRN_IOCTL_"), str(args[1])))

    def names(self, keep: set[str]) -> list[str]:
        return [n for n, _ in self.calls if n in keep]

    def args_of(self, name: str) -> list[str]:
        return [a for n, a in self.calls if n == name]


@pytest.fixture
def calls() -> Iterator[Calls]:
    log = logging.getLogger("acrn.trace")
    handler, level = Calls(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = Machine(accel="soft")
    yield m
    m.runtime.close()


def _memsegs(calls: Calls) -> list[tuple[int, int, int]]:
    out = []
    for a in calls.args_of("SET_MEMSEG"):
        m = re.search(r"attr=(\w+), user_vm_pa=(\w+),.*len=(\w+)", a)
        assert m is not None, a
        out.append((int(m.group(1), 0), int(m.group(2), 0), int(m.group(3), 0)))
    return out


@pytest.mark.soft
def test_normal_boot_ioctl_order(calls: Calls, machine: Machine) -> None:
    spec = ImageSpec(elf=elf32(DEBUGEXIT_42))
    with VmSession(
        mem_size=spec.layout(16 * MiB).lowmem, device=EmulatedDevice(machine), accel="soft", cpu_affinity=0b10
    ) as s:
        prepare_boot(s, spec, 16 * MiB)
        result = s.run(timeout=60)
    assert result.reason == "debugexit" and result.status == (42 << 1) | 1
    keep = {"CREATE_VM", "SET_MEMSEG", "SET_VCPU_REGS", "CREATE_IOREQ_CLIENT", "START_VM"}
    assert calls.names(keep) == [
        "CREATE_VM",
        "SET_MEMSEG",
        "SET_VCPU_REGS",
        "CREATE_IOREQ_CLIENT",
        "START_VM",
    ]
    assert _memsegs(calls) == [(7, 0, 16 * MiB)]
    # Teardown (acrn-dm's main): PAUSE, DESTROY_IOREQ_CLIENT (ends ATTACH), PAUSE again, DESTROY_VM.
    loop = calls.names({"CREATE_IOREQ_CLIENT", "START_VM", "ATTACH_IOREQ_CLIENT"})
    assert loop[:3] == ["CREATE_IOREQ_CLIENT", "START_VM", "ATTACH_IOREQ_CLIENT"]  # vm_loop's order
    tail = calls.names({"PAUSE_VM", "DESTROY_IOREQ_CLIENT", "DESTROY_VM"})
    assert tail[-4:] == ["PAUSE_VM", "DESTROY_IOREQ_CLIENT", "PAUSE_VM", "DESTROY_VM"]


@pytest.mark.soft
def test_memsegs_are_lowmem_then_bios_then_highmem_and_only_vcpu_0_gets_regs(
    calls: Calls, machine: Machine
) -> None:
    memsize = 2 * GiB + 4 * MiB
    spec = ImageSpec(ovmf=b"\xf4" * 4096, cpus=2)
    with VmSession(
        mem_size=spec.layout(memsize).lowmem, device=EmulatedDevice(machine), accel="soft", cpu_affinity=0b110
    ) as s:
        prepare_boot(s, spec, memsize)
    assert _memsegs(calls) == [(7, 0, 2 * GiB), (7, 4 * GiB - 2 * MiB, 2 * MiB), (7, 4 * GiB, 4 * MiB)]
    regs = calls.args_of("SET_VCPU_REGS")
    assert len(regs) == 1 and regs[0].startswith("{vcpu_id=0,")
    # No ioreq client and no START before the vm_loop runs (acrn-dm's add_cpu comes last).
    assert not calls.names({"CREATE_IOREQ_CLIENT", "START_VM"})


# inc dword [0x9000]; cmp dword [0x9000], 2; je done; mov al, 0xfe; out 0x64, al; hlt;
# done: mov al, 0x2a; out 0xf4, al; hlt       (resets once through the i8042, then exits)
RESET_ONCE = bytes.fromhex("ff0500900000833d00900000027405b0fee664f4b02ae6f4f4")
RESET_ONCE_SPEC = ImageSpec(elf=elf32(RESET_ONCE))


def reset_once_session(machine: Machine, fast: bool = False) -> VmSession:
    """A soft session for RESET_ONCE, not yet booted (prepare_boot wires the reset devices to
    the session's ``request_reset`` as it is then, so tests may wrap it first)."""
    return VmSession(
        mem_size=RESET_ONCE_SPEC.layout(16 * MiB).lowmem,
        device=EmulatedDevice(machine),
        accel="soft",
        cpu_affinity=0b10,
        fast_path=fast,
    )


@pytest.mark.soft
@pytest.mark.parametrize("fast", [False, True], ids=["faithful", "fast"])
def test_guest_reset_holds_the_notify_back_and_runs_acrn_dm_sequence(
    calls: Calls, machine: Machine, fast: bool
) -> None:
    # vm_loop: while the reset is pending the request that asked for it is not notified;
    # PAUSE, CLEAR_VM_IOREQ and RESET_VM complete it, then the reload and START (vm_system_reset).
    with reset_once_session(machine, fast) as s:
        prepare_boot(s, RESET_ONCE_SPEC, 16 * MiB)
        result = s.run(timeout=60)
        resets = s.resets
    assert (result.reason, result.status, resets) == ("debugexit", (0x2A << 1) | 1, 1)
    keep = {"NOTIFY_REQUEST_FINISH", "PAUSE_VM", "CLEAR_VM_IOREQ", "RESET_VM", "SET_VCPU_REGS", "START_VM"}
    names = calls.names(keep)
    first = names.index("START_VM")
    second = names.index("START_VM", first + 1)
    # The first boot's only I/O is the 0xFE write: not a single NOTIFY before the reset sequence.
    assert names[first + 1 : second + 1] == [
        "PAUSE_VM",
        "CLEAR_VM_IOREQ",
        "RESET_VM",
        "SET_VCPU_REGS",
        "START_VM",
    ]


@pytest.mark.soft
@pytest.mark.parametrize("fast", [False, True], ids=["faithful", "fast"])
def test_reset_finished_while_its_request_is_emulated_still_holds_that_notify_back(
    calls: Calls, machine: Machine, fast: bool
) -> None:
    # The reset sequence runs on the session's thread; here it is over before the 0xFE write that
    # asked for it returns.  That request must still not be notified (CLEAR_VM_IOREQ completed
    # it): a NOTIFY now would complete a slot of the restarted guest (a found race: the restarted
    # guest then ran on from the old HLT).
    with reset_once_session(machine, fast) as s:
        request_reset = s.request_reset
        waited: list[bool] = []

        def reset_and_wait_for_it() -> None:
            request_reset()
            deadline = time.monotonic() + 30
            while s.resets == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
            waited.append(s.resets == 1)

        s.request_reset = reset_and_wait_for_it  # type: ignore[method-assign]
        prepare_boot(s, RESET_ONCE_SPEC, 16 * MiB)
        result = s.run(timeout=60)
    assert waited == [True]
    assert (result.reason, result.status) == ("debugexit", (0x2A << 1) | 1)
    names = calls.names({"NOTIFY_REQUEST_FINISH", "START_VM"})
    second = names.index("START_VM", names.index("START_VM") + 1)
    assert "NOTIFY_REQUEST_FINISH" not in names[:second]
    # After the restart: at most the NOTIFY of the debug-exit write, never one for the 0xFE write.
    assert names[second + 1 :].count("NOTIFY_REQUEST_FINISH") <= 1


@pytest.mark.soft
def test_close_ends_the_ioreq_thread_while_a_reset_it_waits_for_never_runs(
    machine: Machine, no_leaks: None
) -> None:
    # The run can end (a stop requested, a timeout) between the guest's reset request and the
    # reset sequence; the ioreq thread then waits for a reset that never comes.  close() must
    # still end it (found by the guest-code fuzzer: the thread outlived close()).
    s = reset_once_session(machine)
    request_reset = s.request_reset

    def stop_then_reset() -> None:
        s.request_stop("poweroff", 0, "a stop that wins over the reset")
        request_reset()

    s.request_reset = stop_then_reset  # type: ignore[method-assign]
    prepare_boot(s, RESET_ONCE_SPEC, 16 * MiB)
    result = s.run(timeout=60)
    assert result.reason == "poweroff" and s.resets == 0
    t0 = time.monotonic()
    s.close()
    assert time.monotonic() - t0 < 5  # not the 10 s join timeout
