"""One guest run as ``acrn run`` shows it: console, signals, a closed stdout, status line, results.

What a user can count on, in every mode:

* the guest's console goes to stdout; when stdin is a terminal its keys go to the UART, with
  QEMU's Ctrl-A escapes (:class:`acrn.dm.console.InteractiveConsole`);
* SIGINT, SIGTERM and SIGHUP end the run as any other stop does: the terminal is restored, the
  "VM ended" line names the signal, ``--dump-state`` and ``--json`` are written, and the exit
  status is 128 + the signal number (a signal before the VM starts ends with the same status);
* a closed stdout (``acrn run ... | head``) ends the run at once with status 141, as SIGPIPE
  ends QEMU, with one summary line on stderr;
* on a terminal (stderr), a status line shows what the vCPUs do while the console is silent;
* a timeout says what the guest printed last and what would help.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from acrn.cli import CliError

if TYPE_CHECKING:
    from acrn.dm.vmm import RunResult, VmSession

#: Exit status when standard output is closed under the console (128 + SIGPIPE, as a shell reports).
STATUS_STDOUT_CLOSED = 128 + signal.SIGPIPE
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: The status line appears once the console has been silent this long (seconds).
SILENT_AFTER = 2.0
#: How much console output is kept to quote on a timeout.
TAIL_BYTES = 4096


@dataclass
class RunOptions:
    """What ``acrn run`` asked for, independent of the mode."""

    device: str = "auto"
    accel: str = "auto"
    fast_path: bool = False
    timeout: float | None = None  # None: no timeout
    stop_at: bytes | None = None
    interactive: bool = False
    hybrid: bool = False
    fallback: bool = True
    strict: bool = False
    dump_state: str | None = None
    json_path: str | None = None
    verbose: int = 0
    boot: bool = False
    status_line: bool = False
    loader: str | None = None
    bootargs: str | None = None
    pit_owner: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, boot: bool) -> RunOptions:
        interactive = args.stdin == "on" or (args.stdin == "auto" and _isatty(sys.stdin))
        timeout = args.timeout
        if timeout is None:
            # A user at a console or booting a kernel decides when it ends (as with QEMU); a raw
            # image that is silent for 30 s is stuck.
            timeout = math.inf if interactive or boot else 30.0
        return cls(
            device=args.device,
            accel=args.accel,
            fast_path=args.ioreq == "fast",
            timeout=None if math.isinf(timeout) else timeout,
            stop_at=args.stop_at.encode() if args.stop_at else None,
            interactive=interactive,
            hybrid=args.hybrid,
            fallback=not args.no_fallback,
            strict=args.strict,
            dump_state=args.dump_state,
            json_path=args.json,
            verbose=int(getattr(args, "verbose", 0) or 0),
            boot=boot,
            status_line=_isatty(sys.stderr),
            bootargs=getattr(args, "bootargs", None),
            pit_owner=getattr(args, "pit_owner", None),
        )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class _Console:
    """The console sink: stdout (a closed one ends the run), the --stop-at marker, a tail to quote."""

    opts: RunOptions
    session: VmSession | None = None
    bytes_out: int = 0
    last_output: float = field(default_factory=time.monotonic)
    tail: bytearray = field(default_factory=bytearray)
    stdout_closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    status_shown: bool = False
    _marker_window: bytes = b""

    def __call__(self, data: bytes) -> None:
        with self.lock:
            self.bytes_out += len(data)
            self.last_output = time.monotonic()
            self.tail += data
            del self.tail[:-TAIL_BYTES]
            if self.status_shown:
                self._clear_status()
            if not self.stdout_closed:
                try:
                    sys.stdout.buffer.write(data)
                    sys.stdout.buffer.flush()
                except OSError as e:
                    # EPIPE: the reader went away (`| head`); anything else (ENOSPC on /dev/full,
                    # EIO on a hung-up terminal) also ends the run once, not once per byte.
                    self._closed(None if e.errno == errno.EPIPE else e)
        marker = self.opts.stop_at
        if marker is not None and self.session is not None:
            window = self._marker_window + data
            if marker in window:
                self.session.request_stop("marker", 0, f"console printed {marker.decode(errors='replace')!r}")
            self._marker_window = window[-len(marker) :]

    def _closed(self, error: OSError | None) -> None:
        self.stdout_closed = True
        # Later writes (ours, and the interpreter's final flush) go nowhere instead of failing.
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.buffer.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        if self.session is None:
            return
        if error is None:
            self.session.request_stop("stdout-closed", STATUS_STDOUT_CLOSED, "standard output was closed")
        else:
            self.session.request_stop(
                "stdout-error", 1, f"writing the console to standard output: {error.strerror}"
            )

    def _clear_status(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
        self.status_shown = False

    def show_status(self, text: str) -> None:
        with self.lock:
            sys.stderr.write("\r\x1b[K" + text)
            sys.stderr.flush()
            self.status_shown = True

    def clear_status(self) -> None:
        with self.lock:
            if self.status_shown:
                self._clear_status()

    def last_line(self) -> str:
        lines = [ln for ln in bytes(self.tail).decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1].strip()[-160:] if lines else ""


class _Signals:
    """SIGINT/SIGTERM/SIGHUP end the run through the session.

    Python runs a handler on the main thread between two bytecodes, possibly while that thread
    holds a lock the stop would take (the session's stop Event, inside ``Event.wait``): the
    handler therefore only writes the signal number to a pipe, and a thread of its own asks the
    session to stop.  Before the session exists (and after the run) the handler raises
    :class:`CliError` instead: nothing is running that a stop could end.
    """

    def __init__(self) -> None:
        self.session: VmSession | None = None
        self.after_run = False
        self._old: dict[int, Any] = {}
        self._pipe: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (tests call main() there)
        self._pipe = os.pipe()
        self._thread = threading.Thread(target=self._forward, name="acrn-signals", daemon=True)
        self._thread.start()
        for sig in HANDLED_SIGNALS:
            self._old[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        if self._pipe is not None:
            r, w = self._pipe
            os.write(w, b"\0")
            if self._thread is not None:
                self._thread.join(timeout=5)
            os.close(r)
            os.close(w)
            self._pipe = None

    def _handler(self, signum: int, _frame: object) -> None:
        if self.session is not None and self._pipe is not None:
            os.write(self._pipe[1], bytes([signum]))
            return
        name = signal.Signals(signum).name
        when = "after the run, while writing its results" if self.after_run else "before the VM ran"
        raise CliError(f"{name} (signal {signum}) {when}", 128 + signum)

    def _forward(self) -> None:
        assert self._pipe is not None
        r = self._pipe[0]
        while True:
            data = os.read(r, 1)
            if not data or data == b"\0":
                return
            signum = data[0]
            session = self.session
            if session is not None:
                name = signal.Signals(signum).name
                session.request_stop("signal", 128 + signum, f"{name} (signal {signum})")


def _status_text(session: VmSession, console: _Console, t0: float, last: dict[str, Any]) -> str | None:
    """One line about what the vCPUs do, or None while the console is busy."""
    now = time.monotonic()
    silent = now - console.last_output
    counts = _exit_counts(session)
    total = sum(counts.values())
    dt = max(now - last.get("t", t0), 1e-3)
    rate = (total - last.get("total", 0)) / dt
    kinds = {k: v - last.get("counts", {}).get(k, 0) for k, v in counts.items()}
    last.update(t=now, total=total, counts=counts)
    if silent < SILENT_AFTER:
        return None
    if session.paused_by_user:
        return f"[acrn {now - t0:.0f} s] VM paused: Ctrl-A x ends the run"
    busiest = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]) if v > 0)
    engine = session.control.accel_name if session.control is not None else "kernel HSM"
    stats = getattr(session, "fallback_stats", None)
    if stats is not None and getattr(stats, "switches", 0) == 0 and engine == "hybrid":
        engine = "hybrid, still on the soft CPU"
    text = f"[acrn {now - t0:.0f} s] {engine}: {rate:,.0f} exits/s"
    if busiest:
        text += f" ({busiest})"
    elif rate == 0:
        text += " (no exits: computing, or halted waiting for an interrupt)"
    if stats is not None and stats.total:
        text += f", {stats.total} fallback events"
    return text + f"; console silent {silent:.0f} s"


def _runners(session: VmSession) -> list[int]:
    """The vCPUs the emulator has run (empty against the real HSM)."""
    return session.control.vcpu_ids(session.vm.vmid) if session.control is not None else []


def _exit_counts(session: VmSession) -> dict[str, int]:
    return session.control.exit_counts(session.vm.vmid) if session.control is not None else {}


def _status_thread(session: VmSession, console: _Console, done: threading.Event, t0: float) -> None:
    last: dict[str, Any] = {}
    while not done.wait(1.0):
        try:
            text = _status_text(session, console, t0, last)
        except Exception:  # the status line must never disturb the run
            continue
        if text is not None:
            console.show_status(text)
    console.clear_status()


def _pause_and_show(session: VmSession, notice: Callable[[str], None]) -> None:
    """Ctrl-A p: PAUSE_VM and print every vCPU's live registers (ACRN cannot resume a paused VM)."""
    from acrn.errors import HsmError
    from acrn.regs.show import format_state

    if not session.paused_by_user:
        session.vm.pause()
        session.paused_by_user = True
    lines = ["[acrn] VM paused (ACRN_IOCTL_PAUSE_VM); ACRN has no resume: Ctrl-A x ends the run"]
    ran = sorted(_runners(session)) or [0]  # vCPUs that never ran hold only their reset state
    for vid in ran:
        try:
            st = session.vm.vcpu_state(vid)
        except HsmError as e:
            lines.append(f"vCPU {vid}: {e}")
            continue
        lines.append(f"vCPU {vid}:")
        lines += ["  " + ln for ln in format_state(st).rstrip("\n").splitlines()]
    notice("\n".join(lines))


def _status_now(session: VmSession, console: _Console, t0: float, notice: Callable[[str], None]) -> None:
    """Ctrl-A s: one status line on demand."""
    counts = _exit_counts(session)
    exits = ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"
    engine = session.control.accel_name if session.control is not None else "kernel HSM"
    notice(
        f"[acrn] {time.monotonic() - t0:.1f} s on {engine}; exits: {exits}; "
        f"console {console.bytes_out} bytes; guest resets {session.resets}"
        + ("; paused" if session.paused_by_user else "")
    )


def run_session(
    opts: RunOptions,
    *,
    name: str,
    mem_size: int,
    build: Callable[[VmSession], None],
    cpu_affinity: int = 0,
    no_reboot: bool = False,
) -> int:
    """Create the session, ``build`` it (images, registers), run it and report; the exit status."""
    from acrn.dm.console import InteractiveConsole, terminal_notice
    from acrn.dm.vmm import VmSession

    for option, path in (("--dump-state", opts.dump_state), ("--json", opts.json_path)):
        # Refuse an unwritable result file now, not after a long run.
        if path and path != "-" and not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
            raise CliError(f"{option} {path}: its directory does not exist or is not writable")
    signals = _Signals()
    signals.install()
    console = _Console(opts)
    t0 = time.monotonic()
    try:
        session_cm = _open_session(
            VmSession, name=name, mem_size=mem_size, device=opts.device, accel=opts.accel,
            console=console, fast_path=opts.fast_path, cpu_affinity=cpu_affinity, pit_owner=opts.pit_owner,
        )  # fmt: skip
        with session_cm as session:
            console.session = session
            session.no_reboot = no_reboot
            session.strict_regs = opts.strict
            _choose_engine(session, opts)
            build(session)
            if opts.verbose:
                engine = session.control.accel_name if session.control else "kernel HSM"
                print(f"accelerator: {engine}", file=sys.stderr)
            signals.session = session
            done = threading.Event()
            status = None
            if opts.status_line:
                status = threading.Thread(
                    target=_status_thread, args=(session, console, done, t0), name="acrn-status", daemon=True
                )
                status.start()
            try:
                if opts.interactive:

                    def notice(text: str) -> None:
                        console.clear_status()
                        terminal_notice(text)

                    ic = InteractiveConsole(
                        session,
                        commands=[
                            ("p", "pause the VM and show the vCPU registers",
                             lambda: _pause_and_show(session, notice)),
                            ("s", "status: time, engine, exits, console bytes",
                             lambda: _status_now(session, console, t0, notice)),
                        ],
                        notice=notice,
                    )  # fmt: skip
                    with ic:
                        result = session.run(timeout=opts.timeout)
                else:
                    result = session.run(timeout=opts.timeout)
            finally:
                done.set()
                if status is not None:
                    status.join(timeout=5)
                signals.session = None
                signals.after_run = True
            wall = time.monotonic() - t0
            _report(session, result, console, opts, wall)
    finally:
        signals.restore()
    return result.status


def _open_session(cls: type[VmSession], *, cpu_affinity: int, **kwargs: Any) -> VmSession:
    """The session, with what CREATE_VM's EINVAL means for ``-s`` (vCPUs on pCPUs 1..N)."""
    from acrn.errors import HsmError

    try:
        return cls(cpu_affinity=cpu_affinity, **kwargs)
    except HsmError as e:
        if e.operation != "ACRN_IOCTL_CREATE_VM" or not cpu_affinity:
            raise
        raise CliError(f"{e} (-s N puts the vCPUs on pCPUs 1..N)") from None


def _choose_engine(session: VmSession, opts: RunOptions) -> None:
    """KVM with the soft-CPU fallback (default), the hybrid (--hybrid) or bare KVM (--no-fallback)."""
    session.fallback_stats = None
    if session.control is None:
        return
    from acrn.emu.accel import wrapper_for

    # None where auto picks soft, or KVM has no soft CPU to fall back on: nothing to wrap.
    wrapper = wrapper_for(opts.accel, hybrid=opts.hybrid, fallback=opts.fallback)
    if wrapper is not None:
        session.fallback_stats = session.control.use_engine(hybrid=wrapper == "hybrid")


def _report(session: VmSession, result: RunResult, console: _Console, opts: RunOptions, wall: float) -> None:
    """The summary on stderr, the fault details, the timeout hint, --dump-state and --json."""
    err = sys.stderr
    if console.bytes_out and not console.tail.endswith(b"\n"):
        print(file=err)
    print(result.summary(), file=err)
    stats = session.fallback_stats
    if opts.verbose:
        print(f"  wall time {wall:.2f} s; guest resets {session.resets}", file=err)
        if stats is not None:
            print(f"  {stats.summary()}", file=err)
    report = result.report
    if result.reason not in ("halt", "debugexit", "timeout", "poweroff", "marker", "reset", "quit",
                             "signal", "stdout-closed", "stdout-error") and report is not None:  # fmt: skip
        if report.state:
            st = report.state
            print(
                f"  vcpu {report.vcpu_id}: rip={st['rip']:#x} mode={st['mode']} cr0={st['cr0']:#x} "
                f"cr4={st['cr4']:#x} efer={st['efer']:#x} rflags={st['rflags']:#x}",
                file=err,
            )
        for line in report.disassembly:
            print(f"  {line}", file=err)
        for finding in report.findings:
            print(
                f"  [{finding['level']} {finding['severity']}] {finding['rule']}: {finding['message']}",
                file=err,
            )
    if result.reason == "timeout":
        for line in timeout_hints(console, opts):
            print(f"  {line}", file=err)
    if opts.dump_state:
        try:
            with open(opts.dump_state, "w") as out:
                json.dump({str(k): v for k, v in result.states.items()}, out, indent=2)
        except OSError as e:
            raise CliError(f"--dump-state {opts.dump_state}: {e.strerror}") from None
    if opts.json_path:
        doc = result_json(session, result, console, opts, wall)
        text = json.dumps(doc)
        if opts.json_path == "-":
            if not console.stdout_closed:
                if console.bytes_out and not console.tail.endswith(b"\n"):
                    text = "\n" + text
                with contextlib.suppress(BrokenPipeError):
                    print(text, flush=True)
        else:
            try:
                with open(opts.json_path, "w") as out:
                    out.write(text + "\n")
            except OSError as e:
                raise CliError(f"--json {opts.json_path}: {e.strerror}") from None


def timeout_hints(console: _Console, opts: RunOptions) -> list[str]:
    """What the guest printed last and what would help, after a timeout."""
    last = console.last_line()
    out = [f"the guest printed last: {last!r}" if last else "the guest printed nothing on the console"]
    if opts.boot:
        if (
            not console.bytes_out
            and (opts.loader in ("bzimage", "vmlinux"))
            and "console=" not in (opts.bootargs or "")
        ):
            out.append("no console= in -B: add -B 'console=ttyS0 earlyprintk=serial,ttyS0' to see the kernel")
        out.append(
            "a Linux boot takes minutes on this kind of KVM: --timeout none (the default for a boot) "
            "or a longer --timeout"
            + ("" if opts.hybrid else "; --hybrid runs the decompressor on the soft CPU in about a second")
        )
    else:
        out.append("--timeout none waits for ever; --dump-state FILE shows where the vCPU was")
    out.append("interactively (stdin a terminal), Ctrl-A p pauses the VM and shows its registers")
    return out


def result_json(
    session: VmSession, result: RunResult, console: _Console, opts: RunOptions, wall: float
) -> dict[str, Any]:
    """The machine-readable result of a run (``acrn run --json``)."""
    stats = session.fallback_stats
    fallback: dict[str, Any] | None = None
    if stats is not None:
        fallback = {
            "total": stats.total,
            "events": dict(stats.events),
            "injected": dict(stats.injected),
            "failed": stats.failed,
            "switches": stats.switches,
        }
    return {
        "reason": result.reason,
        "status": result.status,
        "detail": result.detail,
        "wall_seconds": round(wall, 3),
        "run_seconds": round(result.seconds, 3),
        "exits": {k: v for k, v in result.exits.items()},
        "fallback": fallback,
        "console_bytes": console.bytes_out,
        "guest_resets": session.resets,
        "accelerator": session.control.accel_name if session.control is not None else None,
        "device": session.hsm.kind,
        "loader": opts.loader,
        "vcpus": {str(k): {"rip": v.get("rip"), "mode": v.get("mode")} for k, v in result.states.items()},
    }
