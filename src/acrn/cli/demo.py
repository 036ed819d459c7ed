"""``acrn demo``: three built-in guests (real, protected, long mode) entered only through SET_VCPU_REGS."""

from __future__ import annotations

import argparse
import sys

from acrn.cli import CliError
from acrn.cli.run import add_vm_options

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
    from acrn.dm.vmm import VmSession
    from acrn.guests import GUESTS

    for name in args.guests:
        if name not in GUESTS:
            raise CliError(f"unknown guest {name!r} (built in: {', '.join(sorted(GUESTS))})", status=2)
    failures = 0
    for name in args.guests or DEMO_GUESTS:
        guest = GUESTS[name]
        with VmSession(
            name=name[:15], mem_size=guest.mem_size, device=args.device, accel=args.accel,
            fast_path=args.ioreq == "fast",
        ) as session:  # fmt: skip
            session.load(guest.load_gpa, guest.image())
            session.set_regs(guest.regs())
            result = session.run(timeout=args.timeout)
            accel = session.runtime.accelerator.name if session.runtime else "kernel"
        text = result.output.decode(errors="replace").rstrip("\n")
        ok = result.reason == "halt" and (
            guest.expected_output is None or result.output.decode() == guest.expected_output
        )
        failures += not ok
        print(f"[{name} on {accel}, {result.seconds * 1000:.0f} ms] {text}")
        if not ok:
            print(f"  FAILED: {result.summary()}", file=sys.stderr)
    return 1 if failures else 0
