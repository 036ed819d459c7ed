"""acrn.hugepages.parse_memsize agrees with the real acrn-dm on which ``-m`` values it accepts.

acrn-dm parses ``-m`` before it looks for the HSM, so without one an accepted value gets as far as
``vm_create failed`` and a rejected one stops at ``invalid memsize``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from acrn.hugepages import parse_memsize

VALUES = [
    "256M",
    "256m",
    "1g",
    "0x100M",
    "0400M",
    "131072k",
    "256",
    "268435456b",
    "0x10000000",
    "100M",
    "256k",
]


@pytest.mark.usefixtures("host_madt_readable")
@pytest.mark.parametrize("value", VALUES)
def test_memsize_rule_matches_acrn_dm(acrn_dm: Path, tmp_path: Path, value: str) -> None:
    if os.path.exists("/dev/acrn_hsm") or os.path.exists("/dev/acrn_vhm"):
        pytest.skip("this host has a real ACRN HSM device (acrn-dm would start a VM)")
    done = subprocess.run(
        [str(acrn_dm), "-m", value, "-s", "0:0,hostbridge", "--cpu_affinity", "1", "vm1"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = done.stdout + done.stderr
    try:
        parse_memsize(value)
    except ValueError as e:
        assert done.returncode == 64 and str(e) in out, out
    else:
        assert done.returncode == 1 and "vm_create failed" in out, out
