"""Tests that run ACRN's own device model, acrn-dm (marker ``acrndm``).

The binary is built once per session by ``scripts/build-acrn-dm.py`` from the ACRN source tree or
tarball named by ``ACRN_DM_SOURCE`` (CI sets it when the acrn-dm tarball is beside the checkout)
and cached in the repository's ignored ``work-guests/acrn-dm/``.  The tests skip, and say why, when
the variable is unset or the build cannot run here; a build that runs and fails is a test failure.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from acrn import hugepages

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-acrn-dm.py"
# The script's "cannot run here" status (missing packages and not root, no such source, ...).
EXIT_CANNOT_RUN = 3


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.acrndm)


@pytest.fixture(scope="session")
def acrn_dm() -> Path:
    """The acrn-dm binary built from ``ACRN_DM_SOURCE`` (skip when unset or unbuildable)."""
    source = os.environ.get("ACRN_DM_SOURCE")
    if not source:
        pytest.skip("ACRN_DM_SOURCE is not set (an ACRN source tree or acrn-dm tarball)")
    done = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), source],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    message = done.stderr.strip() or done.stdout.strip()
    if done.returncode == EXIT_CANNOT_RUN:
        pytest.skip(message)
    if done.returncode != 0:
        pytest.fail(f"building acrn-dm failed: {message}")
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def host_madt_readable() -> None:
    """acrn-dm parses the host's MADT before it even parses its options (main.c: main, parse_madt)."""
    if not os.access("/sys/firmware/acpi/tables/APIC", os.R_OK):
        pytest.skip("/sys/firmware/acpi/tables/APIC is not readable (acrn-dm needs it; root only)")


@pytest.fixture
def huge_pages() -> Iterator[None]:
    """Whatever the boot reserves through --reserve-hugepages is given back afterwards."""
    try:
        before = hugepages.read_pool().total
    except (OSError, hugepages.HugePageError) as e:
        pytest.skip(f"no 2 MiB huge page pool here: {e}")
    if os.geteuid() != 0:
        pytest.skip("reserving huge pages for acrn-dm needs root")
    yield
    with contextlib.suppress(hugepages.HugePageError):
        hugepages.reserve(before)
