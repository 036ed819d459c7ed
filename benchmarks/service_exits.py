"""I/O exit round trip through the hypervisor service: a C client doing acrn-dm's ioreq loop
(ATTACH_IOREQ_CLIENT, scan the slots, NOTIFY_REQUEST_FINISH) under ``acrn exec``, i.e. every
ioctl through the preload library and the socket to ``acrn hv``, against pyacrn's in-process
faithful ioreq path and C on raw KVM (``exits.py``'s (c) and (a)), all measured in the same run.

The guest is ``io_loop`` (N one-byte OUTs, then HLT) on KVM in every case.  Per exit = slope
between a run of n/10 and one of n exits (the C client times START_VM to its N-th NOTIFY), so
start-up cancels out.  As in ``exits.py`` everything is pinned to one CPU (the service, the
client and pyacrn's threads inherit it), and the service path is measured unpinned too.

    python benchmarks/service_exits.py [--n 5000] [--repeat 3] [--no-pin]

Prints per-exit times and ratios, then one JSON line:
``{"c_us": ..., "faithful_us": ..., "service_us": ..., "service_unpinned_us": ...}``.
Needs /dev/kvm and gcc.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from exits import PORT, build_c, c_seconds, pyacrn_seconds, slope

from acrn.emu.machine import Machine
from acrn.guests import GUESTS

HERE = Path(__file__).resolve().parent


def build_client(workdir: Path) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        sys.exit("gcc not found: the C client is compiled at run time")
    exe = workdir / "service_exit_client"
    subprocess.run([gcc, "-O2", "-o", str(exe), str(HERE / "service_exit_client.c")], check=True)
    return exe


class Service:
    """``acrn hv`` in a subprocess (what a device model talks to), on a socket in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.path = str(workdir / "hv.sock")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "acrn", "hv", "--socket", self.path, "--accel", "kvm", "--no-fallback"],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not self._live():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("acrn hv did not start")
            time.sleep(0.05)

    def _live(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(self.path)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def service_seconds(svc: Service, exe: Path, image: Path, regs: Path, n: int) -> float:
    g = GUESTS["io_loop"]
    out = subprocess.run(
        [sys.executable, "-m", "acrn", "exec", "--hv", svc.path, "--", str(exe), str(image), hex(g.load_gpa),
         str(regs), hex(g.mem_size), str(n), hex(PORT)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    fields = dict(kv.split("=") for kv in out.split())
    assert int(fields["exits"]) == n, out
    return float(fields["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="exits in the large run (the small one is n/10)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = ap.parse_args()
    n_large, n_small = args.n, max(1, args.n // 10)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        sys.exit("/dev/kvm is not usable here")
    all_cpus = os.sched_getaffinity(0)
    pinned = all_cpus if args.no_pin else {min(all_cpus)}
    g = GUESTS["io_loop"]
    with tempfile.TemporaryDirectory(prefix="svc-bench-") as tmp:
        work = Path(tmp)
        kvm_exe = build_c(work)
        client = build_client(work)
        image = work / "io_loop.bin"
        image.write_bytes(g.image())
        os.sched_setaffinity(0, pinned)
        c_us = slope(lambda n: c_seconds(kvm_exe, image, n), n_small, n_large, args.repeat)
        regs_by_n: dict[int, Path] = {}
        for n in (n_small, n_large):
            regs_by_n[n] = work / f"regs{n}.bin"
            regs_by_n[n].write_bytes(g.regs(rcx=n, rdx=PORT).to_bytes())
        machine = Machine(accel="kvm")
        try:
            faithful_us = slope(
                lambda n: pyacrn_seconds(machine, n, fast=False), n_small, n_large, args.repeat
            )
        finally:
            machine.runtime.close()
        svc = Service(work)
        try:
            service_us = slope(
                lambda n: service_seconds(svc, client, image, regs_by_n[n], n), n_small, n_large, args.repeat
            )
        finally:
            svc.stop()
        os.sched_setaffinity(0, all_cpus)
        svc = Service(work)
        try:
            unpinned_us = slope(
                lambda n: service_seconds(svc, client, image, regs_by_n[n], n), n_small, n_large, args.repeat
            )
        finally:
            svc.stop()
    where = "all CPUs" if args.no_pin else f"pinned to CPU {min(all_cpus)}"
    print("I/O exit round trip (io_loop guest, one OUT per exit, KVM)")
    print(f"  (a)-(s) {where}")
    print(f"  (a) C on raw KVM                          {c_us:8.2f} us/exit")
    print(
        f"  (c) pyacrn faithful ioreq, in-process     {faithful_us:8.2f} us/exit  {faithful_us / c_us:5.2f}x C"
    )
    print(
        f"  (s) C client through acrn exec + acrn hv  {service_us:8.2f} us/exit  {service_us / c_us:5.2f}x C"
        f"  {service_us / faithful_us:5.2f}x (c)"
    )
    print(
        f"  (s') the same, all CPUs                   {unpinned_us:8.2f} us/exit  {unpinned_us / c_us:5.2f}x C"
    )
    print(f"  the service's cost per exit over (c): {service_us - faithful_us:.2f} us (pinned)")
    print(
        json.dumps(
            {
                "c_us": round(c_us, 3),
                "faithful_us": round(faithful_us, 3),
                "service_us": round(service_us, 3),
                "service_unpinned_us": round(unpinned_us, 3),
                "service_ratio_c": round(service_us / c_us, 3),
                "service_ratio_faithful": round(service_us / faithful_us, 3),
                "pinned": not args.no_pin,
                "n": n_large,
            }
        )
    )


if __name__ == "__main__":
    main()
