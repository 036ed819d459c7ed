"""The socket-protocol fuzz driver (``service_fuzz.py``) runs, and finds nothing (issue 15).

CI runs seeded random inputs and a short hypothesis run (``PYACRN_FUZZ_EXAMPLES``, default 25);
``-m slow`` runs ``PYACRN_FUZZ_LONG_EXAMPLES`` (default 1000) and prints the driver's counts.
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acrn.service.client import PreloadMissing, preload_library

from . import service_fuzz
from .service_fuzz import STATS, one_input


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


def test_seeded_random_inputs() -> None:
    rng = random.Random(15)
    before = STATS.ioctls
    for _ in range(int(os.environ.get("PYACRN_SVC_FUZZ_SEEDED", "20"))):
        one_input(rng.randbytes(rng.randrange(0, 600)))
    assert STATS.ioctls > before  # the inputs reach the service


def test_empty_and_tiny_inputs() -> None:
    for data in (b"", b"\0", b"\xff", b"\x02\x00"):
        one_input(data)


_SHORT = settings(
    max_examples=int(os.environ.get("PYACRN_FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


@_SHORT
@given(st.binary(max_size=600))
def test_short_fuzz(data: bytes) -> None:
    one_input(data)


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("PYACRN_FUZZ_LONG_EXAMPLES", "1000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(st.binary(min_size=64, max_size=1200))
def test_long_fuzz(data: bytes) -> None:
    one_input(data)


@pytest.mark.slow
def test_long_seeded_random_inputs() -> None:
    """Uniform random programs (hypothesis favours short inputs): PYACRN_SVC_FUZZ_LONG_SEEDED."""
    rng = random.Random(1515)
    for _ in range(int(os.environ.get("PYACRN_SVC_FUZZ_LONG_SEEDED", "2000"))):
        one_input(rng.randbytes(rng.randrange(64, 1200)))


@pytest.mark.slow
def test_long_fuzz_counts(capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print("\n" + STATS.summary())
