#!/usr/bin/env python3
"""Time to the kernel's ``Linux version`` line: pyacrn (``acrn run -k``) against QEMU, same run.

Both boot the same Debian cloud bzImage with the same command line, from process start to the
moment the line appears on the serial console (stdout), and are then stopped.  QEMU is
``qemu-system-x86_64 -accel kvm`` (Debian package ``qemu-system-x86``); ``--tcg`` adds QEMU's
software CPU as a second baseline.  pyacrn runs with ``--hybrid`` (soft CPU for the decompressor,
KVM from the first exception on) unless ``--pyacrn-mode kvm`` asks for KVM throughout.  The guest
is fetched by ``scripts/fetch-linux-guest.py`` if needed.  Ratios are pyacrn / baseline, measured
in the same run (machines here are noisy; absolute times alone mean little).
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUEST = Path(os.environ.get("ACRN_GUEST_DIR", ROOT / "work-guests" / "linux"))
CMDLINE = "console=ttyS0 earlyprintk=serial,ttyS0 nokaslr noxsave"
MARKER = b"Linux version"


def time_to_marker(cmd: list[str], timeout: float, marker: bytes = MARKER) -> float | None:
    """Seconds from spawning ``cmd`` until ``marker`` is on its stdout (None on timeout); then kill it."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen = b""
    found: float | None = None
    try:
        while found is None:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                break
            if not sel.select(left):
                continue
            chunk = proc.stdout.read(65536)
            if not chunk:
                break
            seen = (seen + chunk)[-4096:]
            if marker in seen:
                found = time.monotonic() - t0
    finally:
        sel.close()
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--cmdline", default=CMDLINE)
    p.add_argument("--pyacrn-mode", choices=("hybrid", "kvm"), default="hybrid")
    p.add_argument("--tcg", action="store_true", help="also time QEMU's TCG")
    args = p.parse_args()
    if not (GUEST / "vmlinuz").is_file():
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch-linux-guest.py")], check=False)
        if done.returncode:
            print("no guest kernel; cannot benchmark", file=sys.stderr)
            return 2
    kernel = str(GUEST / "vmlinuz")
    pyacrn = [sys.executable, "-m", "acrn", "run", "-k", kernel, "-B", args.cmdline, "--stdin", "off"]
    pyacrn += ["--timeout", str(args.timeout), "--stop-at", MARKER.decode()]
    if args.pyacrn_mode == "hybrid":
        pyacrn.append("--hybrid")
    qemu_bin = shutil.which("qemu-system-x86_64")
    qemu = [qemu_bin or "qemu-system-x86_64", "-m", "256", "-smp", "1", "-nographic", "-no-reboot"]
    qemu += ["-kernel", kernel, "-append", args.cmdline]
    configs: dict[str, list[str]] = {f"pyacrn ({args.pyacrn_mode})": pyacrn}
    if qemu_bin is None:
        print("qemu-system-x86_64 not found (apt-get install qemu-system-x86): no baseline", file=sys.stderr)
    else:
        configs["qemu -accel kvm"] = [*qemu, "-accel", "kvm"]
        if args.tcg:
            configs["qemu -accel tcg"] = [*qemu, "-accel", "tcg"]
    times: dict[str, list[float | None]] = {name: [] for name in configs}
    for i in range(args.runs):
        for name, cmd in configs.items():
            t = time_to_marker(cmd, args.timeout)
            times[name].append(t)
            shown = f"{t:.2f} s" if t is not None else f"not within {args.timeout:.0f} s"
            print(f"run {i + 1}: {name:<22} 'Linux version' after {shown}", flush=True)
    med: dict[str, float | None] = {}
    for name, ts in times.items():
        ok = [t for t in ts if t is not None]
        med[name] = statistics.median(ok) if ok else None
    print()
    mine = med[f"pyacrn ({args.pyacrn_mode})"]
    for name, m in med.items():
        line = f"{name:<22} median {m:.2f} s" if m is not None else f"{name:<22} no result"
        if m is not None and mine is not None and not name.startswith("pyacrn"):
            line += f"   ratio pyacrn/{name.split()[0]}: {mine / m:.3f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
