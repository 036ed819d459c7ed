"""The other pyacrn benchmarks (issue 7, performance 2-5), each printing figures and ratios:

* ``regs``: SET_VCPU_REGS round trip through the emulator, with and without the client's encode;
* ``boot``: time from opening the HSM to the guest's first UART byte, and VM create+destroy rate
  (CREATE_VM, 2 MiB SET_MEMSEG, PAUSE, DESTROY, close);
* ``memory``: RSS per additional idle (created, never started) VM, guest RAM excluded (untouched);
* ``soft``: runs ``accel_compute.py`` (the reference for compute speed).  This script used to time
  one whole run (VM set-up, START, stop, PAUSE included) and divide the loop's instructions by it,
  so the constant set-up dominated and it reported 0.30x of raw unicorn where the slope shows the
  same speed; see README.md.

    python benchmarks/others.py [regs|boot|memory|soft ...]
"""

from __future__ import annotations

import sys
import threading
import time

from acrn import uapi
from acrn.device import EmulatedDevice
from acrn.dm.vmm import VmSession
from acrn.emu.machine import Machine
from acrn.guests import GUESTS
from acrn.hsm import Hsm


def bench_regs(n: int = 20000) -> None:
    m = Machine(accel="soft")
    hsm = Hsm(EmulatedDevice(m))
    vm = hsm.create_vm("bench")
    regs = GUESTS["hello_protected"].regs()
    raw = regs.to_struct()
    t0 = time.perf_counter()
    for _ in range(n):
        hsm.ioctl(uapi.ACRN_IOCTL_SET_VCPU_REGS, raw)
    ioctl_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for _ in range(n):
        vm.set_vcpu_regs(regs)
    client_us = (time.perf_counter() - t0) / n * 1e6
    vm.pause()
    vm.destroy()
    hsm.close()
    m.runtime.close()
    print(f"SET_VCPU_REGS: {ioctl_us:.2f} us/call (pre-encoded struct), {client_us:.2f} us/call with the "
          f"client's encode ({client_us / ioctl_us:.2f}x)")  # fmt: skip


def bench_boot(accel: str, n: int = 20) -> None:
    g = GUESTS["hello_protected"]
    m = Machine(accel=accel)
    firsts = []
    for _ in range(5):
        first = threading.Event()
        t0 = time.perf_counter()
        s = VmSession(
            mem_size=g.mem_size, device=EmulatedDevice(m), accel=accel, console=lambda b, ev=first: ev.set()
        )
        s.load(g.load_gpa, g.image())
        s.set_regs(g.regs())
        runner = threading.Thread(target=s.run, kwargs={"timeout": 30}, daemon=True)
        runner.start()
        first.wait(30)
        firsts.append(time.perf_counter() - t0)
        runner.join(60)
        s.close()
    t0 = time.perf_counter()
    for _ in range(n):
        hsm = Hsm(EmulatedDevice(m))
        vm = hsm.create_vm("")
        vm.map_ram(0, 2 << 20)
        vm.pause()
        vm.destroy()
        hsm.close()
    rate = n / (time.perf_counter() - t0)
    m.runtime.close()
    print(f"{accel}: open -> first guest output {min(firsts) * 1e3:.1f} ms (best of 5); "
          f"create+destroy {rate:.1f} VMs/s")  # fmt: skip


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def bench_memory(n: int = 10) -> None:
    m = Machine(accel="soft")
    hsms = []
    base = _rss_kib()
    for _ in range(n):
        hsm = Hsm(EmulatedDevice(m))
        vm = hsm.create_vm("")
        vm.map_ram(0, 2 << 20)  # mapped, never touched: not resident
        hsms.append(hsm)
    per_vm = (_rss_kib() - base) / n
    for hsm in hsms:
        assert hsm.vm is not None
        hsm.vm.pause()
        hsm.vm.destroy()
        hsm.close()
    m.runtime.close()
    print(f"memory: {per_vm:.0f} KiB RSS per additional idle VM (guest RAM untouched, so excluded)")


def bench_soft() -> None:
    """Soft compute speed: benchmarks/accel_compute.py is the reference (slopes, same run)."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent / "accel_compute.py"
    subprocess.run([sys.executable, str(script), "--kvm-n", "0"], check=True)


def main() -> None:
    which = sys.argv[1:] or ["regs", "boot", "memory", "soft"]
    for w in which:
        if w == "regs":
            bench_regs()
        elif w == "boot":
            for accel in ("kvm", "soft"):
                bench_boot(accel)
        elif w == "memory":
            bench_memory()
        elif w == "soft":
            bench_soft()
        else:
            sys.exit(f"unknown benchmark {w!r}")


if __name__ == "__main__":
    main()
