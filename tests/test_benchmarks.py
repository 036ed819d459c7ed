"""The benchmarks still run (issue 7): each script, with tiny sizes, completes and prints its JSON.

Nothing here is timed or compared: with sizes this small the slopes are noise.  What could fail is
a benchmark broken by a change elsewhere (a guest that no longer ends as expected, an API that
moved), which would otherwise only show when someone needs the figures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / args[0]), *args[1:]], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def last_json(out: str) -> dict[str, object]:
    data = json.loads(out.strip().splitlines()[-1])
    assert isinstance(data, dict)
    return data


@pytest.mark.kvm
@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc compiles the C baseline")
def test_exits_benchmark_prints_every_figure_and_the_floors() -> None:
    out = run_script("exits.py", "--n", "400", "--repeat", "1")
    data = last_json(out)
    for key in ("c_us", "fast_us", "faithful_us", "faithful_unpinned_us", "bare_python_us", "handover_us"):
        assert isinstance(data[key], float | int), key
    assert data["n"] == 400
    assert "(p) bare Python KVM_RUN loop" in out and "(h) two-thread hand-over" in out


@pytest.mark.kvm
@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc compiles the C client and the C baseline")
def test_service_exits_benchmark_prints_every_figure() -> None:
    out = run_script("service_exits.py", "--n", "200", "--repeat", "1")
    data = last_json(out)
    for key in ("c_us", "faithful_us", "service_us", "service_unpinned_us", "service_ratio_c"):
        assert isinstance(data[key], float | int), key
    assert data["n"] == 200
    assert "(s) C client through acrn exec + acrn hv" in out


@pytest.mark.soft
def test_accel_compute_benchmark_compares_soft_with_raw_unicorn() -> None:
    data = last_json(run_script("accel_compute.py", "--soft-n", "20000000", "--kvm-n", "0", "--repeat", "1"))
    assert data["kvm_ips"] is None  # --kvm-n 0 skips KVM
    assert isinstance(data["unicorn_ips"], float) and isinstance(data["soft_ips"], float)
    assert data["unicorn_ips"] > 0 and data["soft_ips"] > 0


def test_other_benchmarks_print_their_figures() -> None:
    out = run_script("others.py", "regs", "memory")
    assert "SET_VCPU_REGS:" in out and "us/call" in out
    assert "RSS per additional idle VM" in out


@pytest.mark.kvm
def test_boot_benchmark_reaches_the_first_guest_output() -> None:
    out = run_script("others.py", "boot")
    assert "kvm: open -> first guest output" in out and "VMs/s" in out
