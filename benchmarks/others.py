"""The other pyacrn benchmarks (issue 7, performance 2-5), each printing figures and ratios:

* ``regs``: SET_VCPU_REGS round trip through the emulator, with and without the client's encode;
* ``boot``: time from opening the HSM to the guest's first UART byte, and VM create+destroy rate
  (CREATE_VM, 2 MiB SET_MEMSEG, PAUSE, DESTROY, close);
* ``memory``: RSS per additional idle (created, never started) VM, guest RAM excluded (untouched);
* ``soft``: guest instructions per second of the ``compute`` loop on the soft accelerator through
  pyacrn versus raw unicorn on the same code.

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
from acrn.guests import GUESTS, compute_sum
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


def bench_soft(count: int = 20_000_000) -> None:
    import unicorn
    from unicorn import x86_const as x

    g = GUESTS["compute"]
    instructions = 3 * count  # add, dec, jnz per iteration (the printing tail is negligible)
    m = Machine(accel="soft")
    s = VmSession(mem_size=g.mem_size, device=EmulatedDevice(m), accel="soft")
    s.load(g.load_gpa, g.image())
    s.set_regs(g.regs(rcx=count))
    t0 = time.perf_counter()
    r = s.run(timeout=300)
    ours = time.perf_counter() - t0
    s.close()
    m.runtime.close()
    assert r.reason == "halt", r.summary()
    # Raw unicorn: the loop alone (3 instructions at the image's start + 3 .. the jnz), 32-bit flat.
    code = g.image()
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
    uc.mem_map(0, g.mem_size)
    uc.mem_write(g.load_gpa, code)
    loop_end = g.load_gpa + code.index(b"\x75") + 2  # after `jnz 1b`
    uc.reg_write(x.UC_X86_REG_ECX, count)
    t0 = time.perf_counter()
    uc.emu_start(g.load_gpa, loop_end)
    raw = time.perf_counter() - t0
    assert uc.reg_read(x.UC_X86_REG_EAX) == compute_sum(count), "raw unicorn did not run the whole loop"
    print(f"soft: {instructions / ours / 1e6:.0f} M guest instructions/s through pyacrn (whole run), "
          f"{instructions / raw / 1e6:.0f} M/s raw unicorn on the loop ({raw / ours:.2f}x of raw)")  # fmt: skip


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
