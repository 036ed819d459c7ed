"""``acrn run``: run raw images with a given register state through the HSM interface."""

from __future__ import annotations

import argparse
import json
import sys

from acrn.cli import CliError

SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """``2M``, ``512k``, ``0x200000`` or ``1048576`` -> bytes."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = 1
    if t and t[-1] in SIZE_SUFFIXES:
        mult, t = SIZE_SUFFIXES[t[-1]], t[:-1]
    try:
        value = int(t, 0) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 2M, 512k, 0x200000)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return value


def parse_load(text: str) -> tuple[str, int]:
    """``FILE@GPA``."""
    path, sep, gpa = text.rpartition("@")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"--load {text!r}: expected FILE@GPA, e.g. guest.bin@0x8000")
    try:
        return path, int(gpa, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--load {text!r}: {gpa!r} is not an address") from None


def add_vm_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``demo``."""
    p.add_argument(
        "--accel", choices=("auto", "kvm", "soft"), default="auto", help="vCPU engine (default: auto)"
    )
    p.add_argument(
        "--device",
        choices=("auto", "kernel", "emulated"),
        default="auto",
        help="HSM to use: /dev/acrn_hsm, the emulator, or whichever exists (default)",
    )
    p.add_argument(
        "--ioreq",
        choices=("faithful", "fast"),
        default="faithful",
        help="faithful: acrn-dm's ioreq loop on its own thread (ATTACH/NOTIFY); "
        "fast: requests handled on the vCPU thread (emulator only)",
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds before the VM is stopped (default 30)"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run raw images with a given register state",
        description="Create a VM through the HSM, load raw images, set vCPU 0's registers with "
        "ACRN_IOCTL_SET_VCPU_REGS and run it with a 16550 UART at 0x3F8 (console) and a debug-exit "
        "port at 0xF4; or boot an image with acrn-dm's loaders (-k, -E, --ovmf) or --vmlinux. Exit status: 0 "
        "halted with interrupts off, ACPI power-off, guest reset with --no-reboot or --stop-at text seen; "
        "(v<<1)|1 debug-exit, 3 fault, 124 timeout.",
    )
    p.add_argument(
        "--load", action="append", type=parse_load, default=[], metavar="FILE@GPA", help="repeatable"
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--regs", metavar="FILE", help="register state: JSON (acrn_vcpu_regs fields) or 296-byte blob"
    )
    g.add_argument("--preset", choices=("real", "protected", "long"), help="a ready register state")
    # acrn-dm's loaders (spec acrn-hsm.md 7), with acrn-dm's option letters.
    g.add_argument("-k", "--kernel", metavar="BZIMAGE", help="direct-boot a bzImage as acrn-dm does")
    g.add_argument("-E", "--elf", metavar="ELF32", help="boot a static ELF32 (multiboot) image")
    g.add_argument("--ovmf", metavar="FIRMWARE", help="firmware image ending at 4 GiB, reset vector")
    g.add_argument("--vmlinux", metavar="ELF64", help="uncompressed kernel via the 64-bit boot protocol")
    b = p.add_argument_group("booting (with -k, -E, --ovmf or --vmlinux)")
    b.add_argument("-r", "--ramdisk", metavar="FILE", help="initrd for -k / --vmlinux")
    b.add_argument("-B", "--bootargs", metavar="CMDLINE", help="kernel command line")
    b.add_argument(
        "-m",
        "--memsize",
        type=parse_size,
        default=256 << 20,
        help="guest RAM (default 256M; above 2G at 4 GiB)",
    )
    b.add_argument("-s", "--cpus", type=int, default=1, help="vCPUs: cpu_affinity pCPUs 1..N (default 1)")
    b.add_argument("--debugexit", action="store_true", help="the debug-exit port 0xF4 (always present)")
    b.add_argument(
        "--no-reboot", action="store_true", help="end the VM on a guest reset instead of rebooting"
    )
    b.add_argument(
        "--hybrid",
        action="store_true",
        help="run on the soft CPU until the first exception or interrupt, then on KVM (fast decompressor)",
    )
    b.add_argument(
        "--no-fallback", action="store_true", help="KVM emulation failures end the VM (no soft-CPU fallback)"
    )
    b.add_argument("--stop-at", metavar="TEXT", help="end the VM (status 0) once the console prints TEXT")
    b.add_argument(
        "--stdin", choices=("auto", "on", "off"), default="auto", help="keys to the UART (Ctrl-A x quits)"
    )
    b.add_argument("-v", "--verbose-boot", action="store_true", help="show loader decisions and exit details")
    p.add_argument(
        "--pit-owner",
        choices=("hypervisor-kvm", "device-model"),
        help="emulator: who answers ports 0x40-0x43/0x61, KVM's in-kernel PIT (the default) or the "
        "device model's i8254 (ACRN's split; docs/differences.md)",
    )
    p.add_argument("--entry", type=lambda s: int(s, 0), default=0x8000, help="entry address for --preset")
    p.add_argument("--mem", type=parse_size, default=2 << 20, help="guest RAM at GPA 0 (default 2M)")
    p.add_argument("--dump-state", metavar="FILE", help="write the final state of every vCPU as JSON")
    p.add_argument(
        "--strict", action="store_true", help="validate the registers (level abi) before the ioctl"
    )
    add_vm_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.kernel or args.elf or args.ovmf or args.vmlinux:
        return boot(args)
    from acrn.dm.setup import preset_regs
    from acrn.dm.vmm import VmSession
    from acrn.regs.io import load_regs

    images: list[tuple[int, bytes]] = []
    for path, gpa in args.load:
        try:
            with open(path, "rb") as f:
                images.append((gpa, f.read()))
        except OSError as e:
            raise CliError(f"--load {path}: {e.strerror}") from None
    regs = load_regs(args.regs) if args.regs else None

    def console(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    with VmSession(
        mem_size=args.mem,
        device=args.device,
        accel=args.accel,
        console=console,
        fast_path=args.ioreq == "fast",
        pit_owner=args.pit_owner,
    ) as session:
        for gpa, data in images:
            session.load(gpa, data)
        if regs is None:
            regs = preset_regs(args.preset, args.entry, session.mem_size, session.load)
        session.set_regs(regs, strict=args.strict)
        result = session.run(timeout=args.timeout)
    print(result.summary(), file=sys.stderr)
    report = result.report
    if result.reason not in ("halt", "debugexit", "timeout") and report is not None:
        if report.state:
            st = report.state
            print(
                f"  vcpu {report.vcpu_id}: rip={st['rip']:#x} mode={st['mode']} cr0={st['cr0']:#x} "
                f"cr4={st['cr4']:#x} efer={st['efer']:#x} rflags={st['rflags']:#x}",
                file=sys.stderr,
            )
        for line in report.disassembly:
            print(f"  {line}", file=sys.stderr)
        for finding in report.findings:
            print(
                f"  [{finding['level']} {finding['severity']}] {finding['rule']}: {finding['message']}",
                file=sys.stderr,
            )
    if args.dump_state:
        with open(args.dump_state, "w") as out:
            json.dump({str(k): v for k, v in result.states.items()}, out, indent=2)
    return result.status


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CliError(f"{what} {path}: {e.strerror}") from None


def boot(args: argparse.Namespace) -> int:
    """``acrn run -k/-E/--ovmf/--vmlinux``: boot an image as acrn-dm does (spec acrn-hsm.md 7)."""
    import time

    from acrn.dm.loaders import LoaderError
    from acrn.dm.loaders.boot import ConsoleWatch, ImageSpec, InteractiveConsole, prepare_boot
    from acrn.dm.vmm import VmSession

    spec = ImageSpec(
        kernel=_read(args.kernel, "--kernel"),
        elf=_read(args.elf, "--elf"),
        ovmf=_read(args.ovmf, "--ovmf"),
        vmlinux=_read(args.vmlinux, "--vmlinux"),
        ramdisk=_read(args.ramdisk, "--ramdisk"),
        bootargs=args.bootargs,
        cpus=args.cpus,
    )
    if args.cpus < 1:
        raise CliError(f"--cpus {args.cpus}: at least one vCPU")
    try:
        layout = spec.layout(args.memsize)
    except LoaderError as e:
        raise CliError(str(e)) from None
    verbose = bool(args.verbose_boot)

    def echo(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    watch = ConsoleWatch(None, args.stop_at.encode() if args.stop_at else None, echo)
    t0 = time.monotonic()
    with VmSession(
        mem_size=layout.lowmem,
        device=args.device,
        accel=args.accel,
        console=watch,
        fast_path=args.ioreq == "fast",
        pit_owner=args.pit_owner,
        # pCPUs 1..N: the User VM pCPUs of the default platform (0 is the Service VM's).
        cpu_affinity=((1 << args.cpus) - 1) << 1,
    ) as session:
        watch.session = session
        session.no_reboot = args.no_reboot
        stats = None
        if session.runtime is not None and args.accel != "soft":
            from acrn.emu.accel import availability

            if availability("kvm")[0] and (args.hybrid or not args.no_fallback) and availability("soft")[0]:
                from acrn.emu.fallback import FallbackAccelerator, HybridAccelerator

                acc = HybridAccelerator() if args.hybrid else FallbackAccelerator()
                session.runtime.set_accelerator(acc)
                stats = acc.stats
        try:
            result_load = prepare_boot(session, spec, args.memsize)
        except LoaderError as e:
            raise CliError(f"{spec.loader} loader: {e}") from None
        if verbose:
            print(f"{result_load.loader} loader:", file=sys.stderr)
            for note in result_load.notes:
                print(f"  {note}", file=sys.stderr)
            for gpa, size in layout.regions():
                print(f"  RAM [{gpa:#x}, {gpa + size:#x})", file=sys.stderr)
            print(
                f"  accelerator: {session.runtime.accel_name if session.runtime else 'kernel HSM'}",
                file=sys.stderr,
            )
        interactive = args.stdin == "on" or (args.stdin == "auto" and sys.stdin.isatty())
        if interactive:
            with InteractiveConsole(session):
                result = session.run(timeout=args.timeout)
        else:
            result = session.run(timeout=args.timeout)
    print(file=sys.stderr)
    print(result.summary(), file=sys.stderr)
    if verbose:
        print(
            f"  wall time from start {time.monotonic() - t0:.2f} s; guest resets {session.resets}",
            file=sys.stderr,
        )
        if stats is not None:
            print(f"  {stats.summary()}", file=sys.stderr)
    if result.reason not in ("halt", "debugexit", "timeout", "poweroff", "marker", "reset", "quit"):
        st = result.report.state if result.report else None
        if st:
            print(
                f"  rip={st['rip']:#x} mode={st['mode']} cr0={st['cr0']:#x} rflags={st['rflags']:#x}",
                file=sys.stderr,
            )
    if args.dump_state:
        with open(args.dump_state, "w") as out:
            json.dump({str(k): v for k, v in result.states.items()}, out, indent=2)
    return result.status
