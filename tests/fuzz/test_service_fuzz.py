"""The socket-protocol fuzz driver (``service_fuzz.py``) runs, and finds nothing (issue 15).

CI runs seeded random inputs and a short hypothesis run (``PYACRN_FUZZ_EXAMPLES``, default 25);
``-m slow`` runs ``PYACRN_FUZZ_LONG_EXAMPLES`` (default 1000) and prints the driver's counts.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator

import pytest

from acrn.service.client import PreloadMissing, preload_library

from . import service_fuzz


@pytest.fixture(scope="module", autouse=True)
def service() -> Iterator[None]:
    try:
        preload_library()
    except PreloadMissing as e:
        pytest.skip(str(e))
    w = service_fuzz.world()
    try:
        from acrn.service.client import ServiceDevice

        ServiceDevice(w.service.path).close()
    except OSError as e:
        service_fuzz.close_world()
        if e.errno == errno.EBUSY:
            pytest.skip("the preload library already serves another socket in this process")
        raise
    yield
    service_fuzz.close_world()


def test_service_device_close_leaves_no_fd() -> None:
    """ServiceDevice.close goes through the library's close: the calling thread's channel of
    the file goes with it (os.close left it open, and the file's channel thread in the service)."""
    from acrn import uapi
    from acrn.service.client import ServiceDevice

    before = set(os.listdir("/proc/self/fd"))
    dev = ServiceDevice(service_fuzz.world().service.path)
    with pytest.raises(OSError) as e:
        dev._ioctl(uapi.ACRN_IOCTL_PAUSE_VM, 0)  # no VM yet: EINVAL, through a channel
    assert e.value.errno == errno.EINVAL
    dev.close()
    deadline = time.monotonic() + 10  # the service (in this process) releases the file
    while not set(os.listdir("/proc/self/fd")) <= before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set(os.listdir("/proc/self/fd")) <= before
