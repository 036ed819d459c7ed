"""``acrn run``: run a built-in guest, raw images with a register state, or boot a kernel as acrn-dm does.

Every option means one thing in every mode, or is refused where it cannot apply (``--load`` with
``-k``, ``-s`` without a loader, ...).  The run itself (console, signals, a closed stdout, the
status line, the summary, ``--json`` and ``--dump-state``) is :mod:`acrn.cli.console`'s.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from typing import TYPE_CHECKING

from acrn.cli import CliError

if TYPE_CHECKING:
    from acrn.dm.vmm import VmSession

SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

#: The timeout of a run that is neither interactive nor a kernel boot (built-in guests and raw
#: images finish in milliseconds; a longer silence means a stuck guest).
RAW_TIMEOUT = 30.0

EXAMPLES = """\
examples:
  acrn run --guest hello_long              a built-in guest (acrn run --list-guests)
  acrn run --load g.bin@0x8000 --preset long --entry 0x8000
                                           a raw image entered in 64-bit mode
  acrn run -k bzImage -B "console=ttyS0 earlyprintk=serial,ttyS0" --hybrid
                                           boot Linux as acrn-dm does (its option letters)
  acrn run --vmlinux vmlinux -r initrd.cpio -B console=ttyS0 -m 512M
  acrn run -E unit-test.elf --timeout 10 --json result.json

console (every mode): keys go to the guest's 16550 when stdin is a terminal; Ctrl-A h lists the
escapes: Ctrl-A x quits, Ctrl-A p pauses the VM and shows its registers, Ctrl-A s shows a status.

timeout: none for an interactive console or a kernel boot, else 30 s; --timeout none waits for ever.

exit status: 0 halted with interrupts off, ACPI power-off, guest reset with --no-reboot, --stop-at
text seen, Ctrl-A x; (v<<1)|1 the guest wrote v to the debug-exit port 0xF4; 3 the vCPU faulted;
124 timeout; 128+N signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP); 141 standard output closed;
1 an error before the VM ran, 2 a usage error.
"""


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


def parse_timeout(text: str) -> float:
    """Seconds (> 0, finite), or ``none`` / ``inf`` for no timeout (returned as ``math.inf``)."""
    t = text.strip().lower()
    if t in ("none", "inf", "infinity", "never"):
        return math.inf
    try:
        value = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (or 'none')") from None
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a timeout must be a positive number of seconds; 'none' waits for ever"
        )
    return value


def parse_load(text: str) -> tuple[str, int]:
    """``FILE@GPA``."""
    path, sep, gpa = text.rpartition("@")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"--load {text!r}: expected FILE@GPA, e.g. guest.bin@0x8000")
    try:
        value = int(gpa, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--load {text!r}: {gpa!r} is not an address") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--load {text!r}: a guest-physical address is not negative")
    return path, value


def parse_address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address (e.g. 0x8000)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a guest-physical address is not negative")
    return value


def parse_cpus(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of vCPUs") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least one vCPU")
    return value


class _RefuseDebugexit(argparse.Action):
    """acrn-dm's ``--debugexit`` creates the port; in pyacrn it always exists, so the option is refused."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        parser.error("--debugexit: the debug-exit port 0xF4 is always present in pyacrn; drop the option")


def add_vm_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, timeout_help: str) -> None:
    """Options shared by ``run`` and ``demo``."""
    p.add_argument(
        "--accel", choices=("auto", "kvm", "soft"), default="auto", help="vCPU engine (default: auto)"
    )
    p.add_argument(
        "--device",
        choices=("auto", "kernel", "emulated", "service"),
        default="auto",
        help="HSM to use: /dev/acrn_hsm, the emulator in this process, the host's hypervisor service "
        "(acrn hv), or /dev/acrn_hsm if it exists and else the emulator (default)",
    )
    p.add_argument(
        "--hv",
        metavar="SOCKET",
        help="run on the hypervisor service listening on SOCKET (acrn hv), beside other clients' VMs",
    )
    p.add_argument(
        "--ioreq",
        choices=("faithful", "fast"),
        default="faithful",
        help="faithful: acrn-dm's ioreq loop on its own thread (ATTACH/NOTIFY); "
        "fast: requests handled on the vCPU thread (emulator only)",
    )
    p.add_argument("--timeout", type=parse_timeout, default=None, metavar="SECONDS", help=timeout_help)
    p.add_argument(
        "-v", "--verbose", action="count", default=0, dest="sub_verbose",
        help="the same as acrn -v: loader decisions, exit details and the HSM ioctl trace",
    )  # fmt: skip


def use_service(args: argparse.Namespace) -> None:
    """``--hv SOCKET``: the device is the service there (its machine chooses the accelerator)."""
    if getattr(args, "hv", None):
        if args.device not in ("auto", "service"):
            raise CliError(f"--hv and --device {args.device}: --hv means the service's HSM", status=2)
        if args.accel != "auto":
            raise CliError("--accel with --hv: the service's own options choose its accelerator", status=2)
        os.environ["ACRN_HV_SOCKET"] = args.hv
        args.device = "service"


def check_accel(accel: str, device: str) -> None:
    """Refuse an accelerator that cannot run here, with the reason, before any VM exists."""
    if accel == "auto" or device in ("kernel", "service"):
        return
    from acrn.emu.accel import availability

    ok, why = availability(accel)
    if not ok:
        other = "soft" if accel == "kvm" else "kvm"
        hint = f"--accel {other}" if availability(other)[0] else "acrn info shows what works here"
        raise CliError(f"--accel {accel}: not usable here ({why}); try {hint}")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run a built-in guest, raw images with a register state, or boot a kernel",
        description=textwrap.fill(
            "Create a VM through the HSM, put an image in guest RAM, set vCPU 0's registers with "
            "ACRN_IOCTL_SET_VCPU_REGS and run it with a 16550 UART at 0x3F8 (the console) and a "
            "debug-exit port at 0xF4. The image is a built-in guest (--guest), raw files (--load) with "
            "a register state (--regs, --preset), or a kernel or firmware booted with acrn-dm's "
            "loaders (-k, -E, --ovmf) or as Firecracker boots a vmlinux (--vmlinux).",
            width=96,
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("what to run (exactly one)")
    g = src.add_mutually_exclusive_group()
    g.add_argument("--guest", metavar="NAME", help="a built-in guest (--list-guests shows them)")
    g.add_argument(
        "--regs", metavar="FILE", help="register state: JSON (acrn_vcpu_regs fields) or 296-byte blob"
    )
    g.add_argument("--preset", choices=("real", "protected", "long"), help="a ready register state")
    g.add_argument("-k", "--kernel", metavar="BZIMAGE", help="direct-boot a bzImage as acrn-dm does")
    g.add_argument("-E", "--elf", metavar="ELF32", help="boot a static ELF32 (multiboot) image")
    g.add_argument("--ovmf", metavar="FIRMWARE", help="firmware image ending at 4 GiB, reset vector")
    g.add_argument("--vmlinux", metavar="ELF64", help="uncompressed kernel via the 64-bit boot protocol")
    g.add_argument("--list-guests", action="store_true", help="list the built-in guests and exit")

    raw = p.add_argument_group("raw images (with --guest, --regs or --preset)")
    raw.add_argument(
        "--load", action="append", type=parse_load, default=[], metavar="FILE@GPA", help="repeatable"
    )
    raw.add_argument(
        "--entry", type=parse_address, default=None, help="entry address for --preset (default 0x8000)"
    )

    b = p.add_argument_group("booting (with -k, -E, --ovmf or --vmlinux)")
    b.add_argument("-r", "--ramdisk", metavar="FILE", help="initrd for -k / --vmlinux")
    b.add_argument("-B", "--bootargs", metavar="CMDLINE", help="kernel command line (-k / --vmlinux)")
    b.add_argument(
        "-s", "--cpus", type=parse_cpus, default=None,
        help="vCPUs: cpu_affinity pCPUs 1..N (default 1)",
    )  # fmt: skip
    b.add_argument(
        "--no-reboot", action="store_true", help="end the VM on a guest reset instead of rebooting"
    )
    b.add_argument("--debugexit", nargs=0, action=_RefuseDebugexit, help=argparse.SUPPRESS)

    c = p.add_argument_group("every mode")
    c.add_argument(
        "-m", "--mem", "--memsize", dest="mem", type=parse_size, default=None, metavar="SIZE",
        help="guest RAM (default 2M for raw images and built-in guests, 256M for a boot; "
        "a boot puts RAM above 2G at 4 GiB)",
    )  # fmt: skip
    c.add_argument(
        "--hybrid",
        action="store_true",
        help="run on the soft CPU until the first exception or interrupt, then on KVM (fast decompressor)",
    )
    c.add_argument(
        "--no-fallback", action="store_true", help="KVM emulation failures end the VM (no soft-CPU fallback)"
    )
    c.add_argument("--stop-at", metavar="TEXT", help="end the VM (status 0) once the console prints TEXT")
    c.add_argument(
        "--stdin",
        choices=("auto", "on", "off"),
        default="auto",
        help="keys to the UART with Ctrl-A escapes (auto: when stdin is a terminal)",
    )
    c.add_argument(
        "--pit-owner",
        choices=("hypervisor-kvm", "device-model"),
        help="emulator: who answers ports 0x40-0x43/0x61, KVM's in-kernel PIT (the default) or the "
        "device model's i8254, as on ACRN, whose hypervisor gives a User VM no PIT",
    )
    c.add_argument("--dump-state", metavar="FILE", help="write the final state of every vCPU as JSON")
    c.add_argument(
        "--json", metavar="FILE", help="write the run's result as JSON ('-': a last line on stdout)"
    )
    c.add_argument(
        "--strict", action="store_true", help="validate the registers (level abi) before the ioctl"
    )
    add_vm_options(
        c,
        timeout_help="seconds before the VM is stopped, or 'none' (default: none for an interactive "
        "console or a kernel boot, else 30)",
    )
    p.set_defaults(func=run)


BOOT_SOURCES = ("kernel", "elf", "ovmf", "vmlinux")


def _mode(args: argparse.Namespace) -> str:
    """'boot' or 'raw', after refusing the options that do not apply to it."""
    boot = any(getattr(args, n) for n in BOOT_SOURCES)
    raw = bool(args.guest or args.regs or args.preset)
    if not boot and not raw:
        raise CliError(
            "nothing to run: give --guest NAME, --regs FILE or --preset MODE (with --load FILE@GPA), "
            "or a kernel (-k, -E, --ovmf, --vmlinux); acrn run --help has examples",
            status=2,
        )

    def refuse(given: list[str], why: str) -> None:
        if given:
            raise CliError(f"{', '.join(given)}: {why}", status=2)

    if boot:
        refuse(
            [o for o, v in (("--load", args.load), ("--entry", args.entry is not None)) if v],
            "only for raw images (--guest, --regs, --preset); a boot places the image with its loader",
        )
        if args.elf or args.ovmf:
            which = "-E" if args.elf else "--ovmf"
            refuse(
                [o for o, v in (("-r", args.ramdisk), ("-B", args.bootargs)) if v is not None],
                f"{which} takes no ramdisk or command line (acrn-dm passes them to -k only; "
                "pyacrn also to --vmlinux)",
            )
        return "boot"
    refuse(
        [
            o
            for o, v in (
                ("-r", args.ramdisk is not None),
                ("-B", args.bootargs is not None),
                ("-s", args.cpus is not None),
                ("--no-reboot", args.no_reboot),
            )
            if v
        ],
        "only for a boot (-k, -E, --ovmf, --vmlinux): a raw image runs vCPU 0 alone and has no reset device",
    )
    if args.entry is not None and not args.preset:
        refuse(["--entry"], "only with --preset (--regs and --guest carry their own RIP)")
    if not args.guest and not args.load:
        which = "--preset" if args.preset else "--regs"
        refuse([which], "no image to run: add --load FILE@GPA (or run a built-in guest: --guest NAME)")
    return "raw"


def _check_accel_options(args: argparse.Namespace) -> None:
    check_accel(args.accel, args.device)
    if args.hybrid and args.no_fallback:
        raise CliError("--hybrid and --no-fallback: the hybrid engine is KVM with the fallback", status=2)
    if (args.hybrid or args.no_fallback) and args.accel == "soft":
        which = "--hybrid" if args.hybrid else "--no-fallback"
        raise CliError(f"{which}: applies to KVM, not to --accel soft", status=2)
    if args.hybrid:
        from acrn.emu.accel import TABLE, availability

        for name in TABLE["hybrid"].needs:
            ok, why = availability(name)
            if not ok:
                raise CliError(f"--hybrid needs the {name} accelerator: {why}")


def _list_guests() -> int:
    from acrn.guests import GUESTS

    for name, g in GUESTS.items():
        params = ", ".join(f"{k}={v:#x}" for k, v in g.params.items())
        print(f"{name:<16} {g.mode:<9} {g.description}" + (f" [{params}]" if params else ""))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list_guests:
        return _list_guests()
    try:
        return _run(args)
    except (CliError, OSError, ValueError) as e:
        # --json promises a result for every run, one that never started included.
        if args.json:
            _json_error(args.json, e)
        raise


def _json_error(path: str, e: Exception) -> None:
    import contextlib
    import json

    status = e.status if isinstance(e, CliError) else 1
    text = json.dumps({"reason": "error", "status": status, "detail": str(e), "console_bytes": 0})
    with contextlib.suppress(OSError):
        if path == "-":
            print(text, flush=True)
        else:
            with open(path, "w") as out:
                out.write(text + "\n")


def _run(args: argparse.Namespace) -> int:
    mode = _mode(args)
    use_service(args)
    _check_accel_options(args)
    from acrn.cli.console import RunOptions

    opts = RunOptions.from_args(args, boot=mode == "boot")
    if mode == "boot":
        return _boot(args, opts)
    return _raw(args, opts)


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CliError(f"{what} {path}: {e.strerror}") from None


def _raw(args: argparse.Namespace, opts: RunOptions) -> int:
    from acrn.cli.console import run_session
    from acrn.dm.setup import preset_regs
    from acrn.regs.io import load_regs
    from acrn.regs.model import VcpuRegs

    images: list[tuple[int, bytes]] = []
    regs: VcpuRegs | None = None
    mem = args.mem
    name = "pyacrn"
    if args.guest:
        from acrn.guests import GUESTS

        guest = GUESTS.get(args.guest)
        if guest is None:
            raise CliError(
                f"--guest {args.guest!r}: no such built-in guest (acrn run --list-guests; "
                f"built in: {', '.join(GUESTS)})",
                status=2,
            )
        images.append((guest.load_gpa, guest.image()))
        regs = guest.regs()
        mem = mem or guest.mem_size
        name = guest.name[:15]
    for path, gpa in args.load:
        data = _read(path, "--load")
        assert data is not None
        images.append((gpa, data))
    if args.regs:
        regs = load_regs(args.regs)
    mem = mem or 2 << 20
    if mem % 4096:
        raise CliError(f"-m {mem:#x}: guest RAM must be a multiple of 4 KiB", status=2)
    for gpa, data in images:
        if gpa + len(data) > mem:
            raise CliError(
                f"an image of {len(data)} bytes at {gpa:#x} does not fit in -m {mem:#x} bytes of RAM at 0; "
                f"use -m {_suggest(gpa + len(data))} or more"
            )
    preset = args.preset
    entry = 0x8000 if args.entry is None else args.entry

    def build(session: VmSession) -> None:
        nonlocal regs
        for gpa, data in images:
            session.load(gpa, data)
        if regs is None:
            try:
                regs = preset_regs(preset, entry, session.mem_size, session.load)
            except ValueError as e:
                raise CliError(str(e)) from None
        session.set_regs(regs)

    return run_session(opts, name=name, mem_size=mem, build=build)


def _suggest(size: int) -> str:
    """A -m value at least ``size``: whole MiB."""
    mib = -(-size // (1 << 20))
    return f"{mib}M"


def _boot(args: argparse.Namespace, opts: RunOptions) -> int:
    """``acrn run -k/-E/--ovmf/--vmlinux``: boot an image as acrn-dm does (``acrn_sw_load``)."""
    from acrn.cli.console import run_session
    from acrn.dm.boot import prepare_boot
    from acrn.dm.loaders import LoaderError
    from acrn.dm.loaders.check import check_image
    from acrn.dm.loaders.image import ImageSpec

    cpus = args.cpus or 1
    spec = ImageSpec(
        kernel=_read(args.kernel, "--kernel"),
        elf=_read(args.elf, "--elf"),
        ovmf=_read(args.ovmf, "--ovmf"),
        vmlinux=_read(args.vmlinux, "--vmlinux"),
        ramdisk=_read(args.ramdisk, "--ramdisk"),
        bootargs=args.bootargs,
        cpus=cpus,
    )
    path = args.kernel or args.elf or args.ovmf or args.vmlinux
    memsize = args.mem or 256 << 20
    try:
        layout = spec.layout(memsize)
        # Refuse what is not the image it claims to be before any VM exists (acrn-dm would start
        # the VM and let the guest fail: a triple fault or a silent console).
        for note in check_image(spec, memsize):
            print(f"acrn: warning: {path}: {note}", file=sys.stderr)
    except LoaderError as e:
        raise CliError(f"{path}: {e}") from None

    def build(session: VmSession) -> None:
        try:
            result = prepare_boot(session, spec, memsize)
        except LoaderError as e:
            raise CliError(f"{path}: {spec.loader} loader: {e}") from None
        opts.loader = result.loader
        if opts.verbose:
            print(f"{result.loader} loader:", file=sys.stderr)
            for note in result.notes:
                print(f"  {note}", file=sys.stderr)
            for gpa, size in layout.regions():
                print(f"  RAM [{gpa:#x}, {gpa + size:#x})", file=sys.stderr)

    # pCPUs 1..N: the User VM pCPUs of the default platform (0 is the Service VM's).
    return run_session(
        opts,
        name="pyacrn",
        mem_size=layout.lowmem,
        build=build,
        cpu_affinity=((1 << cpus) - 1) << 1,
        no_reboot=args.no_reboot,
    )


if TYPE_CHECKING:
    from acrn.cli.console import RunOptions
