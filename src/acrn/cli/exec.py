"""``acrn exec``: run an unmodified program with ``/dev/acrn_hsm`` leading to the hypervisor service."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile

from acrn.cli import CliError
from acrn.cli.hv import add_machine_options


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "exec",
        help="run a program (e.g. acrn-dm) with /dev/acrn_hsm served by pyacrn's hypervisor",
        description="Run PROGRAM so that /dev/acrn_hsm exists for it and its children and leads to the "
        "pyacrn hypervisor service: the one given with --hv, else the one at the default socket, else a "
        "private one started for the program's lifetime. The program must be dynamically linked (a "
        "preload library makes the device exist). Its exit status is passed through.",
        epilog="examples:\n  acrn exec -- ./vm-sample\n  acrn exec --hybrid -- acrn-dm -m 256M -s 0:0,hostbridge "
        "-s 1:0,lpc -l com1,stdio --cpu_affinity 1 -k vmlinuz vm1\n  acrn hv & acrn exec --hv /run/pyacrn-hv.sock -- ./my-dm",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hv", metavar="SOCKET", help="use the running service at SOCKET")
    p.add_argument(
        "--reserve-hugepages",
        action="store_true",
        help="for acrn-dm: reserve the 2 MiB huge pages its guest memory needs if the host has too few "
        "(root); without it, acrn exec says what to run",
    )
    add_machine_options(p)
    p.add_argument("program", metavar="PROGRAM", help="the program to run")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="its arguments")
    p.set_defaults(func=run)


def check_program(program: str) -> str:
    """The program's path, or CliError saying why the preload library cannot enter it."""
    path = shutil.which(program) if os.sep not in program else program
    if path is None or not os.path.exists(path):
        raise CliError(f"{program}: no such program (not a path, and not found in $PATH)", 127)
    if not os.access(path, os.X_OK) or os.path.isdir(path):
        raise CliError(f"{path}: not an executable file", 126)
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:2] == b"#!":
            return path  # a script: its interpreter is what runs, and gets the library
        if head[:4] != b"\x7fELF":
            raise CliError(f"{path}: not an ELF program or a script", 126)
        try:
            dynamic = _has_interp(f, head)
        except (IndexError, struct.error):
            # Cut short, or program headers past its end: execve would fail with ENOEXEC.
            raise CliError(f"{path}: not a valid ELF program (truncated or corrupt)", 126) from None
        if not dynamic:
            raise CliError(
                f"{path} is statically linked: the preload library that makes /dev/acrn_hsm exist cannot "
                "enter it; link it dynamically", 126
            )  # fmt: skip
    return path


def _has_interp(f: object, head: bytes) -> bool:
    """Whether the ELF has a PT_INTERP program header (i.e. is dynamically linked)."""
    assert hasattr(f, "seek") and hasattr(f, "read")
    is64 = head[4] == 2
    little = head[5] == 1
    e = "<" if little else ">"
    if is64:
        (phoff,) = struct.unpack_from(e + "Q", head, 0x20)
        phentsize, phnum = struct.unpack_from(e + "HH", head, 0x36)
    else:
        (phoff,) = struct.unpack_from(e + "I", head, 0x1C)
        phentsize, phnum = struct.unpack_from(e + "HH", head, 0x2A)
    for i in range(min(phnum, 256)):
        f.seek(phoff + i * phentsize)
        (ptype,) = struct.unpack(e + "I", f.read(4))
        if ptype == 3:  # PT_INTERP
            return True
    return False


def run(args: argparse.Namespace) -> int:
    from acrn.service.client import PreloadMissing, preload_library
    from acrn.service.server import HvService, ServiceError, _live, default_socket_path

    argv = list(args.args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    program = check_program(args.program)
    if os.path.basename(program).startswith("acrn-dm"):
        _check_hugepages(argv, reserve=args.reserve_hugepages)
    try:
        lib = str(preload_library())
    except PreloadMissing as e:
        raise CliError(str(e)) from None
    machine_opts = args.accel != "auto" or args.hybrid or args.no_fallback or args.pit_owner != "device-model"
    service: HvService | None = None
    tmpdir: str | None = None
    if args.hv:
        if not _live(args.hv):
            raise CliError(
                f"--hv {args.hv}: no pyacrn hypervisor service answers there; start one with `acrn hv`"
            )
        if machine_opts:
            raise CliError(
                "--accel/--hybrid/--no-fallback/--pit-owner configure a private service; the one at --hv has its own",
                2,
            )
        path = args.hv
    elif not machine_opts and _live(default_socket_path()):
        path = default_socket_path()
    else:
        from acrn.cli.hv import make_machine
        from acrn.emu.machine import Machine

        machine = make_machine(args)
        assert isinstance(machine, Machine)
        tmpdir = tempfile.mkdtemp(prefix="acrn-exec-")
        path = os.path.join(tmpdir, "hv.sock")
        service = HvService(machine, path)
        try:
            service.start()
        except ServiceError as e:
            raise CliError(str(e)) from None
    env = dict(os.environ)
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = lib + (" " + preload if preload else "")
    env["ACRN_HV_SOCKET"] = path
    if args.verbose and not service:
        # The service elsewhere logs the decoded calls; here only the library can say what it sent.
        env["ACRN_EXEC_TRACE"] = "1"
    try:
        return _run_child([program, *argv], env)
    finally:
        if service is not None:
            service.stop()
            service.machine.runtime.close()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _check_hugepages(argv: list[str], *, reserve: bool) -> None:
    """acrn-dm backs guest RAM with 2 MiB huge pages (devicemodel/core/hugetlb.c): say what to
    reserve before it fails obscurely, or reserve them when asked to."""
    from acrn import hugepages

    try:
        pool = hugepages.read_pool()
        missing = hugepages.shortfall(argv, pool)
    except (hugepages.HugePageError, OSError, ValueError):
        return  # acrn-dm itself will say what is wrong with its options
    if missing is None:
        return
    if not reserve:
        raise CliError(f"{missing} (or rerun with --reserve-hugepages)")
    total = hugepages.target_total(pool, hugepages.pages_needed(argv))
    try:
        hugepages.reserve(total)
    except hugepages.HugePageError as e:
        raise CliError(f"cannot reserve the huge pages acrn-dm needs: {e}") from None


def _run_child(argv: list[str], env: dict[str, str]) -> int:
    """Run the program as a shell would: Ctrl-C reaches it (and not us); SIGTERM/SIGHUP to us are
    passed on; its exit status, or 128 + the signal that ended it, is ours."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)}
    child: subprocess.Popen[bytes] | None = None
    early: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if child is None:
            early.append(signum)  # the program does not exist yet: passed on once it does
        elif child.poll() is None:
            child.send_signal(signum)

    def ignore(signum: int, frame: object) -> None:
        pass  # caught rather than SIG_IGN, which the program would inherit through exec

    # Installed before the program starts: a signal in between would otherwise find Python's
    # defaults (KeyboardInterrupt for Ctrl-C, death for SIGTERM, the program left running).
    signal.signal(signal.SIGINT, ignore)
    signal.signal(signal.SIGQUIT, ignore)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)
    try:
        try:
            child = subprocess.Popen(argv, env=env)
        except OSError as e:
            raise CliError(f"{argv[0]}: cannot run: {e.strerror}", 126) from None
        for signum in early:
            forward(signum, None)
        # A signal to us may land on a thread of the private service; its handler (forward)
        # runs in this thread only between bytecodes, so the wait must not block for long.
        while True:
            try:
                rc = child.wait(0.5)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if rc < 0:
        print(f"acrn exec: {argv[0]} ended by signal {-rc}", file=sys.stderr)
        return 128 - rc
    return rc
