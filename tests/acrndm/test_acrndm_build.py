"""acrn-dm v3.3 builds unmodified, starts, and fails as ACRN's code says when there is no HSM.

What a run without ``/dev/acrn_hsm`` prints and does is recorded in docs/acrn-dm.md ("Without an
HSM").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-acrn-dm.py"
# acrn-dm's own default launch line for a Linux guest (ACRN's launch scripts always pass
# --cpu_affinity); the VM name is the last argument.
LAUNCH = ["-m", "256M", "-s", "0:0,hostbridge", "-s", "1:0,lpc", "-l", "com1,stdio", "--cpu_affinity", "1"]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False
    )


def test_build_script_reports_a_missing_source_in_one_line(tmp_path: Path) -> None:
    done = _run([sys.executable, str(BUILD_SCRIPT), str(tmp_path / "nope.tar.gz")], tmp_path)
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "no such ACRN source" in done.stderr
    assert "Traceback" not in done.stderr


def test_build_script_rejects_a_tree_without_devicemodel(tmp_path: Path) -> None:
    done = _run([sys.executable, str(BUILD_SCRIPT), str(tmp_path)], tmp_path)
    assert done.returncode == 3
    assert "not an ACRN source tree" in done.stderr and "Traceback" not in done.stderr


def test_build_is_cached_and_prints_the_binary(acrn_dm: Path, tmp_path: Path) -> None:
    assert acrn_dm.name == "acrn-dm" and os.access(acrn_dm, os.X_OK)
    # A second call finds the cache (keyed by the source's sha256) and prints the same path.
    done = _run([sys.executable, str(BUILD_SCRIPT), os.environ["ACRN_DM_SOURCE"]], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(acrn_dm)


@pytest.mark.usefixtures("host_madt_readable")
def test_acrn_dm_prints_its_version(acrn_dm: Path, tmp_path: Path) -> None:
    done = _run([str(acrn_dm), "-v"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("DM: ") and " build by " in done.stdout


@pytest.mark.usefixtures("host_madt_readable")
def test_acrn_dm_help_lists_its_options(acrn_dm: Path, tmp_path: Path) -> None:
    done = _run([str(acrn_dm), "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert "Usage: acrn-dm" in out and "--cpu_affinity" in out and "--ovmf" in out


@pytest.mark.usefixtures("host_madt_readable")
def test_acrn_dm_without_an_hsm_stops_at_vm_create(acrn_dm: Path, tmp_path: Path) -> None:
    # core/vmmapi.c: vm_create looks for /dev/acrn_vhm then /dev/acrn_hsm; with neither it logs the
    # old device name and main() exits 1 before any guest memory is set up.
    if os.path.exists("/dev/acrn_hsm") or os.path.exists("/dev/acrn_vhm"):
        pytest.skip("this host has a real ACRN HSM device")
    done = _run([str(acrn_dm), *LAUNCH, "vm1"], tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "vm_create: vm1" in out
    assert "Could not open /dev/acrn_vhm" in out
    assert "vm_create failed" in out
    assert "vm_setup_memory" not in out


@pytest.mark.usefixtures("host_madt_readable")
def test_acrn_dm_without_a_vm_name_says_so(acrn_dm: Path, tmp_path: Path) -> None:
    done = _run([str(acrn_dm), *LAUNCH], tmp_path)
    assert done.returncode == 1
    assert "You must provide the name of the Virtual Machine" in done.stdout + done.stderr
