"""``acrn hv``: the host's emulated ACRN hypervisor as a service on a Unix socket."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from acrn.cli import CliError


def add_machine_options(p: argparse.ArgumentParser) -> None:
    """The emulated machine's options, shared by ``acrn hv`` and ``acrn exec``'s private service."""
    p.add_argument(
        "--accel",
        choices=("auto", "kvm", "soft"),
        default="auto",
        help="how vCPUs execute: KVM, the soft CPU (unicorn), or KVM where it works (default)",
    )
    p.add_argument(
        "--hybrid",
        action="store_true",
        help="run each vCPU on the soft CPU until its first interrupt or exception, then on "
        "KVM (what makes a Linux boot fast on a slow KVM)",
    )
    p.add_argument(
        "--no-fallback", action="store_true", help="KVM emulation failures end the VM (no soft-CPU fallback)"
    )
    p.add_argument(
        "--pit-owner",
        choices=("device-model", "hypervisor-kvm"),
        default="device-model",
        help="who answers the PIT's ports 0x40-0x43 and 0x61: the device model, as on ACRN, whose hypervisor "
        "gives a post-launched VM no PIT (default), or KVM's in-kernel PIT",
    )


def make_machine(args: argparse.Namespace) -> object:
    """A Machine as the options say; CliError for what cannot work here."""
    from acrn.emu.accel import availability, get_accelerator, wrapper_for
    from acrn.emu.machine import Machine
    from acrn.emu.platform import Platform

    if args.accel != "auto":
        ok, why = availability(args.accel)
        if not ok:
            raise CliError(f"--accel {args.accel}: not usable here ({why}); try --accel auto")
    platform = Platform.default()
    # ACRN v3.3 emulates no PIT for a post-launched VM (hypervisor/arch/x86/guest/vm.c: create_vm):
    # acrn-dm's own i8254 answers ports 0x40-0x43 and 0x61 (docs/acrn-dm.md).
    platform.pit_owner = args.pit_owner
    machine = Machine(platform, args.accel)
    wrapper = wrapper_for(args.accel, hybrid=args.hybrid, fallback=not args.no_fallback)
    if wrapper is not None:
        machine.runtime.set_accelerator(get_accelerator(wrapper))
    elif args.hybrid:
        raise CliError("--hybrid needs both KVM and the soft CPU")
    return machine


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "hv",
        help="run the host's emulated ACRN hypervisor as a service (for acrn exec, acrn run --hv, acrn ps)",
        description="Run one emulated ACRN hypervisor for this host, in the foreground. Each connection to "
        "its Unix socket is one open file of /dev/acrn_hsm; a client that goes away has its VMs released "
        "as the kernel releases them. Stop it with Ctrl-C or SIGTERM.",
        epilog="examples:\n  acrn hv &\n  acrn exec -- ./my-device-model vm1\n  acrn ps",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--socket", metavar="PATH", help="Unix socket to listen on (default: $ACRN_HV_SOCKET, "
                   "else $XDG_RUNTIME_DIR/pyacrn-hv.sock, else /run/pyacrn-hv.sock for root)")  # fmt: skip
    add_machine_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acrn.emu.machine import Machine
    from acrn.service.server import HvService, ServiceError

    logging.getLogger("acrn.service").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    machine = make_machine(args)
    assert isinstance(machine, Machine)
    service = HvService(machine, args.socket)
    done = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        got.append(signum)
        done.set()

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        service.start()
    except ServiceError as e:
        raise CliError(str(e)) from None
    print(f"acrn hv: listening on {service.path} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        # A process-directed signal may be delivered to any thread that does not block it (the
        # service's threads too); Python then runs the handler in the main thread only when that
        # thread next runs bytecode, which a long wait would postpone by up to its timeout.
        while not done.wait(0.5):
            pass
    finally:
        n = len(service.machine.hv.vms())
        service.stop()
        machine.runtime.close()
    why = f"signal {got[0]}" if got else "exit"
    print(f"acrn hv: stopped ({why}); {n} VM(s) released", file=sys.stderr)
    return 0
