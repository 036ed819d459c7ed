"""``acrn demo``: three built-in guests (real, protected, long mode) entered only through SET_VCPU_REGS."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from acrn.cli import CliError
from acrn.cli.run import add_vm_options

if TYPE_CHECKING:
    from acrn.dm.vmm import RunResult

DEMO_GUESTS = ("hello_real", "hello_protected", "hello_long")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="boot the built-in real-, protected- and long-mode guests through the HSM interface",
        description="For each mode: CREATE_VM, SET_MEMSEG, copy the guest, SET_VCPU_REGS (the only way the "
        "mode is entered), START_VM, serve its UART through the ioreq path, then PAUSE/DESTROY.",
    )
    p.add_argument(
        "guests", nargs="*", metavar="GUEST", help="built-in guests to run (default: the three hello guests)"
    )
    add_vm_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acrn.guests import GUESTS

    for name in args.guests:
        if name not in GUESTS:
            raise CliError(f"unknown guest {name!r} (built in: {', '.join(sorted(GUESTS))})", status=2)
    failures = 0
    for name in args.guests or DEMO_GUESTS:
        ok, accel, result = _run_guest(name, args)
        text = result.output.decode(errors="replace").rstrip("\n")
        failures += not ok
        print(f"[{name} on {accel}, {result.seconds * 1000:.0f} ms] {text}")
        if not ok:
            print(f"  FAILED: {result.summary()}", file=sys.stderr)
    return 1 if failures else 0


def _run_guest(name: str, args: argparse.Namespace) -> tuple[bool, str, RunResult]:
    """One guest from CREATE_VM to DESTROY: (as expected?, where it ran, the run's result)."""
    from acrn.dm.vmm import VmSession
    from acrn.guests import GUESTS

    guest = GUESTS[name]
    expected = guest.expected_output.encode() if guest.expected_output is not None else None
    sessions: list[VmSession] = []
    printed = bytearray()

    def console(data: bytes) -> None:
        # Through a real (or served) HSM the guest's final HLT is invisible to the device model,
        # as on ACRN: the run ends when the guest printed all it should.
        printed.extend(data)
        if sessions and sessions[0].runtime is None and expected is not None and printed == expected:
            sessions[0].request_stop("marker", 0, "the guest printed its expected output")

    with VmSession(
        name=name[:15], mem_size=guest.mem_size, device=args.device, accel=args.accel,
        fast_path=args.ioreq == "fast", console=console,
    ) as session:  # fmt: skip
        sessions.append(session)
        session.load(guest.load_gpa, guest.image())
        session.set_regs(guest.regs())
        result = session.run(timeout=args.timeout)
        accel = session.runtime.accelerator.name if session.runtime else session.hsm.kind
        ended = ("halt",) if session.runtime is not None else ("halt", "marker")
    ok = result.reason in ended and (expected is None or result.output == expected)
    return ok, accel, result
