"""``acrn`` as users meet it: the real command in a subprocess or on a pseudo-terminal.

One test (or a parametrized family) per class of defect: pipes and signals, inputs that are not
what they claim, tracebacks, bare errno, options that did nothing, timeouts, and what QEMU and
Firecracker users expect (guests by name, --json, the status line, the console's Ctrl-A escapes,
a readable ioctl trace).  Each asserts the exit status, the message and, on a terminal, that the
terminal is restored.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import termios
from pathlib import Path

import pytest
from cli_helpers import (
    READY_THEN_SPIN,
    SPAM,
    WAIT,
    Pty,
    acrn,
    bzimage,
    elf_debugexit,
    image,
    no_traceback,
    run,
)

SOFT = ["--accel", "soft", "--device", "emulated"]
ACCELS = [pytest.param("kvm", marks=pytest.mark.kvm), pytest.param("soft", marks=pytest.mark.soft)]


# ----------------------------------------------------------------------------- pipes and signals
@pytest.mark.parametrize("accel", ACCELS)
def test_closed_stdout_ends_the_run_with_141_and_one_summary(tmp_path: Path, accel: str) -> None:
    """`acrn run ... | head -c 100`: the reader goes away, the VM ends at once (no timeout, no traceback)."""
    spam = image(tmp_path, "spam.bin", SPAM)
    p = subprocess.Popen(
        acrn("run", "--load", f"{spam}@0x8000", "--preset", "real", "--accel", accel, "--timeout", "600"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.read(100) == b"A" * 100
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(WAIT) == 141
    no_traceback(err)
    assert err.count("VM ended: stdout-closed (status 141)") == 1, err
    assert "standard output was closed" in err


def test_shell_pipe_to_head_ends_quietly(tmp_path: Path) -> None:
    spam = image(tmp_path, "spam.bin", SPAM)
    cmd = " ".join(acrn("run", "--load", f"{spam}@0x8000", "--preset", "real", *SOFT, "--timeout", "600"))
    r = subprocess.run(
        f"set -o pipefail; {cmd} | head -c 10", shell=True, executable="/bin/bash",
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert r.returncode == 141 and r.stdout == "A" * 10
    no_traceback(r.stderr)


@pytest.mark.soft
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_ends_the_run_with_summary_dump_and_json(tmp_path: Path, sig: signal.Signals) -> None:
    """Not on a terminal: the signal ends the run like any stop, and what was asked for is written."""
    img = image(tmp_path, "ready.bin", READY_THEN_SPIN)
    dump, res = tmp_path / "state.json", tmp_path / "result.json"
    p = subprocess.Popen(
        acrn("run", "--load", f"{img}@0x8000", "--preset", "real", *SOFT, "--timeout", "600",
             "--dump-state", str(dump), "--json", str(res)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert p.stdout is not None
    assert p.stdout.readline() == b"READY\n"  # the VM runs
    p.send_signal(sig)
    _out, err = p.communicate(timeout=WAIT)
    assert p.returncode == 128 + sig
    no_traceback(err.decode())
    assert f"VM ended: signal (status {128 + sig})" in err.decode()
    assert f"{sig.name} (signal {int(sig)})" in err.decode()
    assert json.loads(dump.read_text())["0"]["mode"] == "real"
    doc = json.loads(res.read_text())
    assert (doc["reason"], doc["status"], doc["console_bytes"]) == ("signal", 128 + sig, 6)
    assert "[acrn " not in err.decode()  # no status line when stderr is not a terminal


@pytest.mark.soft
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_on_a_terminal_restores_it(tmp_path: Path, sig: signal.Signals) -> None:
    """An interactive run (raw terminal, echo off) ended by a signal gives the terminal back."""
    img = image(tmp_path, "ready.bin", READY_THEN_SPIN)
    t = Pty("run", "--load", f"{img}@0x8000", "--preset", "real", *SOFT)
    try:
        before = t.attrs()
        t.read_until(b"READY")
        # The console is interactive: raw mode, no echo (no timeout either: it runs until told).
        raw = t.attrs()
        assert not raw[3] & termios.ECHO and not raw[3] & termios.ICANON
        t.kill(sig)
        assert t.wait() == 128 + sig
        after = t.attrs()
        assert after[3] & termios.ECHO and after[3] & termios.ICANON
        assert after == before
        text = t.output.decode(errors="replace")
        assert f"VM ended: signal (status {128 + sig})" in text
        no_traceback(text)
    finally:
        t.close()


@pytest.mark.soft
def test_console_escapes_help_pause_registers_status_and_quit(tmp_path: Path) -> None:
    img = image(tmp_path, "ready.bin", READY_THEN_SPIN)
    t = Pty("run", "--load", f"{img}@0x8000", "--preset", "real", *SOFT)
    try:
        t.read_until(b"READY")
        t.write(b"\x01h")
        t.read_until(b"Ctrl-A Ctrl-A")
        assert b"Ctrl-A x" in t.output and b"Ctrl-A p" in t.output
        # The status line appears while the console is silent (stderr is the terminal).
        t.read_until(b"exits/s")
        assert b"[acrn " in t.output
        t.write(b"\x01p")
        t.read_until(b"idtr")
        text = t.output.decode(errors="replace")
        assert "VM paused" in text and "rip 0x000000000000800e" in text  # the live RIP: the jmp $
        t.write(b"\x01s")
        t.read_until(b"guest resets")
        t.write(b"\x01x")
        assert t.wait() == 0
        assert b"VM ended: quit (status 0)" in t.output
        assert t.attrs()[3] & termios.ECHO
    finally:
        t.close()


# ----------------------------------------------------------------------------- inputs
@pytest.mark.parametrize(
    "option, data, found, fix",
    [
        ("-k", b"console=ttyS0\nhello\n", "a text file (starting 'console=ttyS0')", "bzImage"),
        ("-k", bzimage(syssize=0x10000, body=0x1000), "truncated bzImage", "copy it again"),
        ("-k", b"\x7fELF\x02\x01\x01" + bytes(0x200), "an ELF64 file", "use --vmlinux"),
        ("-k", bzimage(init_size=0x8000000), "init_size", "needs -m 146M or more"),
        ("--ovmf", b"#!/bin/sh\necho not firmware\n" * 4, "a text file", "no jump"),
        ("--vmlinux", bzimage(), "a bzImage", "use -k"),
        ("-E", b"\x7fELF\x02\x01\x01" + bytes(0x200), "an ELF64 file", "--vmlinux"),
        ("-E", b"\x7fELF\x01\x01\x01" + bytes(9) + bytes(0x30), "without program headers", "object file"),
    ],
)
def test_image_that_is_not_what_it_claims_is_refused_before_the_vm(
    tmp_path: Path, option: str, data: bytes, found: str, fix: str
) -> None:
    path = image(tmp_path, "image", data)
    r = run("run", option, path, "-m", "64M", *SOFT)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"acrn: error: {path}: "), r.stderr
    assert found in lines[0] and fix in lines[0]
    assert "VM ended" not in r.stderr


# ----------------------------------------------------------------------------- tracebacks
@pytest.mark.soft
def test_timeout_none_and_inf_mean_no_timeout() -> None:
    for value in ("inf", "none"):
        r = run("run", "--guest", "hello_long", *SOFT, "--timeout", value)
        assert r.returncode == 0 and "hello from long mode" in r.stdout
        no_traceback(r.stderr)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_bad_timeouts_are_usage_errors(value: str) -> None:
    r = run("run", "--guest", "hello_long", f"--timeout={value}")
    assert r.returncode == 2 and "--timeout" in r.stderr and "'none'" in r.stderr
    no_traceback(r.stderr)


@pytest.mark.parametrize("command", [["run", "--guest", "hello_long"], ["demo"]])
def test_accel_kvm_without_a_working_kvm_is_one_line(command: list[str]) -> None:
    r = run(*command, "--accel", "kvm", "--device", "emulated", no_kvm=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "acrn: error: --accel kvm: not usable here (/nonexistent/kvm: No such file or directory); try --accel soft"
    ]


def test_hybrid_without_kvm_says_why() -> None:
    r = run("run", "--guest", "hello_long", "--hybrid", "--device", "emulated", no_kvm=True)
    assert r.returncode == 1 and "--hybrid needs the kvm accelerator" in r.stderr
    no_traceback(r.stderr)


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import acrn.cli.info
    from acrn.cli import main

    def broken(args: object) -> int:
        raise RuntimeError("something pyacrn did not foresee")

    monkeypatch.setattr(acrn.cli.info, "run", broken)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "acrn: internal error: RuntimeError: something pyacrn did not foresee "
        "(acrn --debug info ... shows the traceback)"
    ]
    with pytest.raises(RuntimeError):
        main(["--debug", "info"])


# ----------------------------------------------------------------------------- bare errno
@pytest.mark.soft
def test_set_vcpu_regs_eperm_says_which_rule(tmp_path: Path) -> None:
    from acrn.guests import GUESTS

    g = GUESTS["hello_protected"]
    regs = g.regs()
    regs.cr0 = 0x11  # PE|ET without NE
    f = tmp_path / "regs.json"
    f.write_text(json.dumps(regs.to_json_dict(hex_values=True)))
    img = image(tmp_path, "g.bin", g.image())
    r = run("run", "--regs", str(f), "--load", f"{img}@{g.load_gpa:#x}", *SOFT)
    assert r.returncode == 1
    line = r.stderr.strip()
    assert line.startswith("acrn: error: ACRN_IOCTL_SET_VCPU_REGS: EPERM (Operation not permitted): ")
    assert "NE (bit 5)" in line and "spec" not in line


def test_too_many_vcpus_gives_einval_and_the_platform_limit(tmp_path: Path) -> None:
    r = run("run", "-E", elf_debugexit(tmp_path), "-s", "4", "-m", "16M", *SOFT)
    assert r.returncode == 1
    assert "ACRN_IOCTL_CREATE_VM: EINVAL" in r.stderr and "at most 3 vCPUs" in r.stderr
    assert "-s N puts the vCPUs on pCPUs 1..N" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    no_traceback(r.stderr)


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "args, message",
    [
        (["--guest", "hello_long", "-s", "2"], "-s: only for a boot"),
        (["--guest", "hello_long", "--no-reboot"], "--no-reboot: only for a boot"),
        (["--guest", "hello_long", "-B", "quiet"], "-B: only for a boot"),
        (["--guest", "hello_long", "--entry", "0x9000"], "--entry: only with --preset"),
        (["-k", "vmlinuz", "--load", "x@0x1000"], "--load: only for raw images"),
        (["-E", "x.elf", "-B", "quiet"], "-E takes no ramdisk or command line"),
        (["--guest", "hello_long", "--debugexit"], "--debugexit: the debug-exit port 0xF4 is always present"),
        (["--guest", "hello_long", "--hybrid", "--accel", "soft"], "--hybrid: applies to KVM"),
        ([], "nothing to run"),
        (["--preset", "long"], "--preset: no image to run: add --load FILE@GPA"),
        (["--guest", "nosuch"], "no such built-in guest"),
    ],
)
def test_option_that_cannot_apply_is_refused(args: list[str], message: str) -> None:
    r = run("run", *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    no_traceback(r.stderr)


@pytest.mark.soft
def test_one_memory_option_and_one_verbose_in_every_mode(tmp_path: Path) -> None:
    a = run("-v", "run", "--guest", "hello_real", *SOFT, "-m", "4M")
    b = run("run", "-v", "--guest", "hello_real", *SOFT, "--mem", "4M")
    for r in (a, b):
        assert r.returncode == 0
        assert "ACRN_IOCTL_SET_MEMSEG" in r.stderr and "len=0x400000" in r.stderr
        assert "accelerator: soft" in r.stderr


@pytest.mark.soft
def test_stop_at_works_for_raw_images(tmp_path: Path) -> None:
    img = image(tmp_path, "ready.bin", READY_THEN_SPIN)
    r = run(
        "run", "--load", f"{img}@0x8000", "--preset", "real", *SOFT, "--stop-at", "READY", "--timeout", "600"
    )
    assert r.returncode == 0 and "VM ended: marker (status 0)" in r.stderr


# ----------------------------------------------------------------------------- timeouts
@pytest.mark.soft
def test_a_timeout_quotes_the_last_console_line_and_what_helps(tmp_path: Path) -> None:
    img = image(tmp_path, "ready.bin", READY_THEN_SPIN)
    r = run("run", "--load", f"{img}@0x8000", "--preset", "real", *SOFT, "--timeout", "0.5")
    assert r.returncode == 124
    assert "VM ended: timeout (status 124)" in r.stderr
    assert "the guest printed last: 'READY'" in r.stderr and "--timeout none" in r.stderr


def test_default_timeouts_are_what_a_user_expects() -> None:
    import argparse

    from acrn.cli.console import RunOptions

    def opts(stdin: str, boot: bool, timeout: float | None = None) -> RunOptions:
        ns = argparse.Namespace(
            stdin=stdin, timeout=timeout, device="emulated", accel="soft", ioreq="faithful",
            stop_at=None, hybrid=False, no_fallback=False, strict=False, dump_state=None, json=None,
        )  # fmt: skip
        return RunOptions.from_args(ns, boot=boot)

    assert opts("on", boot=False).timeout is None  # interactive console: no timeout
    assert opts("off", boot=True).timeout is None  # a kernel boot: no timeout (as QEMU)
    assert opts("off", boot=False).timeout == 30.0  # a raw image silent for 30 s is stuck
    assert opts("on", boot=False, timeout=5.0).timeout == 5.0
    assert opts("off", boot=False, timeout=math.inf).timeout is None


# ----------------------------------------------------------------------------- what users expect
@pytest.mark.parametrize("accel", ACCELS)
def test_guest_by_name_with_json_result(accel: str) -> None:
    r = run("run", "--guest", "hello_long", "--accel", accel, "--device", "emulated", "--json", "-")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0] == "hello from long mode"
    doc = json.loads(lines[-1])
    assert doc["reason"] == "halt" and doc["status"] == 0 and doc["console_bytes"] == 21
    assert doc["exits"]["pio"] > 0 and doc["wall_seconds"] > 0 and doc["vcpus"]["0"]["mode"] == "long"
    assert doc["accelerator"] == ("kvm" if accel == "kvm" else "soft")
    assert doc["fallback"] is None or doc["fallback"]["total"] == 0


def test_list_guests_and_presets_and_examples_in_help() -> None:
    r = run("run", "--list-guests")
    assert r.returncode == 0 and "hello_long" in r.stdout and "debugexit" in r.stdout
    r = run("regs", "preset", "--list")
    assert r.returncode == 0 and "bzimage" in r.stdout and "parameters: lowmem=0x10000000" in r.stdout
    assert "spec" not in r.stdout
    for cmd in (["run"], ["demo"], ["regs", "preset"]):
        h = run(*cmd, "--help")
        assert h.returncode == 0 and "examples:" in h.stdout and ".md" not in h.stdout


@pytest.mark.soft
def test_demo_json_is_one_line_per_guest() -> None:
    r = run("demo", "--json", *SOFT)
    assert r.returncode == 0
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["guest"] for d in docs] == ["hello_real", "hello_protected", "hello_long"]
    assert all(d["ok"] and d["reason"] == "halt" for d in docs)


@pytest.mark.soft
def test_ioctl_trace_decodes_io_requests_and_cleanup_logs_no_failure() -> None:
    r = run("-v", "run", "--guest", "hello_real", *SOFT)
    assert r.returncode == 0
    err = r.stderr
    assert (
        "ACRN_IOCTL_NOTIFY_REQUEST_FINISH({vmid=1, reserved=0, vcpu=0}) = 0  # pio out 0x3f8 size 1 = 0x68 'h'"
        in err
    )
    assert "# pio in 0x3fd size 1 -> 0x60" in err
    assert "ATTACH_IOREQ_CLIENT() = 0" not in err  # once per scan: -vv only
    assert "the client was destroyed: the ioreq loop ends" in err
    for bad in ("WARNING", "failed", "Traceback"):
        assert bad not in err
    rr = run("-vv", "run", "--guest", "hello_real", *SOFT)
    assert "ATTACH_IOREQ_CLIENT() = 0" in rr.stderr


@pytest.mark.soft
def test_a_failing_stdout_ends_the_run_once(tmp_path: Path) -> None:
    """/dev/full: ENOSPC on the first console byte ends the run with one line, not one per byte."""
    spam = image(tmp_path, "spam.bin", SPAM)
    with open("/dev/full", "wb") as full:
        r = subprocess.run(
            acrn("run", "--load", f"{spam}@0x8000", "--preset", "real", *SOFT, "--timeout", "600"),
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=WAIT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert r.returncode == 1
    no_traceback(r.stderr)
    assert "VM ended: stdout-error (status 1)" in r.stderr and "No space left on device" in r.stderr


def test_an_unwritable_result_file_is_refused_before_the_run(tmp_path: Path) -> None:
    for option in ("--dump-state", "--json"):
        r = run("run", "--guest", "hello_long", *SOFT, option, str(tmp_path / "no" / "such.json"))
        assert r.returncode == 1 and f"acrn: error: {option} " in r.stderr
        assert "VM ended" not in r.stderr


def test_a_signal_before_the_vm_runs_is_one_error_line_with_128_plus_n() -> None:
    """While images load (no session yet), SIGTERM/SIGINT/SIGHUP abort with the signal's status."""
    from acrn.cli import CliError
    from acrn.cli.console import _Signals

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        s = _Signals()
        s.install()
        try:
            with pytest.raises(CliError) as e:
                signal.raise_signal(sig)
        finally:
            s.restore()
        assert e.value.status == 128 + sig
        assert str(e.value) == f"{sig.name} (signal {int(sig)}) before the VM ran"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers put back


def test_json_has_a_result_for_a_run_that_never_started(tmp_path: Path) -> None:
    res = tmp_path / "result.json"
    text = image(tmp_path, "notes.txt", b"just some notes\n")
    r = run("run", "-k", text, *SOFT, "--json", str(res))
    assert r.returncode == 1
    doc = json.loads(res.read_text())
    assert (doc["reason"], doc["status"]) == ("error", 1) and "not a bzImage" in doc["detail"]
    r = run("run", "--guest", "hello_long", "-s", "2", "--json", "-")
    assert r.returncode == 2 and json.loads(r.stdout)["status"] == 2
