"""``acrn run`` with a real Debian kernel as a user meets it: wrong files, too little memory, and a
signal during an interactive boot (the terminal must come back)."""

from __future__ import annotations

import signal
import subprocess
import sys
import termios
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cli"))
from cli_helpers import Pty, no_traceback, run

CMDLINE = "console=ttyS0 earlyprintk=serial,ttyS0 nokaslr noxsave"


@pytest.mark.boot
def test_real_kernel_files_passed_with_the_wrong_option_are_refused(
    linux_guest: Path, tmp_path: Path
) -> None:
    vmlinuz, vmlinux = linux_guest / "vmlinuz", linux_guest / "vmlinux"
    truncated = tmp_path / "vmlinuz.part"
    truncated.write_bytes(vmlinuz.read_bytes()[: 5 << 20])
    cases = [
        (["-k", str(linux_guest / "initramfs.cpio")], "a cpio archive"),
        (["-k", str(truncated)], "truncated bzImage"),
        (["-k", str(vmlinuz), "-m", "32M"], "needs -m "),
        (["--vmlinux", str(vmlinuz)], "this is a bzImage"),
    ]
    if vmlinux.is_file():
        cases.append((["-k", str(vmlinux)], "use --vmlinux"))
    for args, words in cases:
        r = run("run", *args, "--device", "emulated", "--stdin", "off")
        assert r.returncode == 1, (args, r.stderr)
        assert words in r.stderr and "VM ended" not in r.stderr, (args, r.stderr)
        no_traceback(r.stderr)


@pytest.mark.boot
@pytest.mark.kvm
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_during_an_interactive_boot_restores_the_terminal(
    linux_guest: Path, sig: signal.Signals
) -> None:
    t = Pty("run", "-k", str(linux_guest / "vmlinuz"), "-B", CMDLINE, "--hybrid", "--device", "emulated")
    try:
        before = t.attrs()
        t.read_until(b"\n", timeout=240)  # the kernel's first console line: the boot is under way
        assert not t.attrs()[3] & termios.ECHO  # raw while the console is interactive
        t.kill(sig)
        assert t.wait() == 128 + sig
        assert t.attrs() == before
        text = t.output.decode(errors="replace")
        assert f"VM ended: signal (status {128 + sig})" in text
        no_traceback(text)
    finally:
        t.close()


@pytest.mark.boot
@pytest.mark.kvm
def test_boot_into_a_closed_pipe_ends_with_141(linux_guest: Path) -> None:
    cmd = [sys.executable, "-m", "acrn", "run", "-k", str(linux_guest / "vmlinuz"), "-B", CMDLINE,
           "--hybrid", "--device", "emulated", "--stdin", "off"]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.read(20)  # some console output
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(240) == 141
    assert "VM ended: stdout-closed (status 141)" in err
    no_traceback(err)
