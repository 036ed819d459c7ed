"""Boot tests: a stock Debian kernel through the HSM interface (marker ``boot``; ``slow`` on demand).

The guest (Debian's cloud bzImage and a busybox initramfs) is fetched once per session by
``scripts/fetch-linux-guest.py`` into the repository's ignored ``work-guests/linux/`` (or
``ACRN_GUEST_DIR``); when that is impossible the tests skip and say why.  ``slow`` tests run only
with ``-m slow`` (the rule is in the root conftest).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUEST_DIR = Path(os.environ.get("ACRN_GUEST_DIR", ROOT / "work-guests" / "linux"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "boot: boots a real Linux kernel (bounded; needs the Debian archive once)"
    )


@pytest.fixture(scope="session")
def linux_guest() -> Path:
    """The directory with ``vmlinuz`` and ``initramfs.cpio``, fetched once (skip if impossible)."""
    if not ((GUEST_DIR / "vmlinuz").is_file() and (GUEST_DIR / "initramfs.cpio").is_file()):
        script = ROOT / "scripts" / "fetch-linux-guest.py"
        done = subprocess.run(
            [sys.executable, str(script), "--dest", str(GUEST_DIR)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            pytest.skip(f"no Linux guest: {done.stderr.strip() or done.stdout.strip()}")
    return GUEST_DIR
