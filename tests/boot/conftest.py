"""Boot tests: a stock Debian kernel through the HSM interface (marker ``boot``; ``slow`` on demand).

The guest (the root conftest's ``linux_guest``: Debian's cloud bzImage and a busybox initramfs) is fetched once per session by
``scripts/fetch-linux-guest.py`` into the repository's ignored ``work-guests/linux/`` (or
``ACRN_GUEST_DIR``); when that is impossible the tests skip and say why.  ``slow`` tests run only
with ``-m slow`` (the rule is in the root conftest).
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "boot: boots a real Linux kernel (bounded; needs the Debian archive once)"
    )
