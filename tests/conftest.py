"""Shared fixtures and backend detection.

Tests that need /dev/kvm are marked ``kvm`` and skipped, with the reason, where it does not work;
tests that need unicorn are marked ``soft``; ``slow`` tests run only with ``-m slow``.  The session
summary says which backends ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def _kvm_usable() -> tuple[bool, str]:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"/dev/kvm unusable: {e.strerror}"
    os.close(fd)
    return True, "/dev/kvm opened"


def _unicorn_usable() -> tuple[bool, str]:
    try:
        import unicorn  # noqa: F401
    except ImportError as e:
        return False, f"unicorn not installed: {e}"
    return True, "unicorn importable"


KVM_OK, KVM_WHY = _kvm_usable()
SOFT_OK, SOFT_WHY = _unicorn_usable()
_ran: dict[str, int] = {"kvm": 0, "soft": 0}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `slow` tests (full fuzz and load runs, a complete Linux boot) run only when asked for with
    # `-m slow`, so that the README's test command (and CI) stays within minutes.
    run_slow = "slow" in (config.option.markexpr or "")
    skip_slow = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "kvm" in item.keywords and not KVM_OK:
            item.add_marker(pytest.mark.skip(reason=f"needs /dev/kvm: {KVM_WHY}"))
        if "soft" in item.keywords and not SOFT_OK:
            item.add_marker(pytest.mark.skip(reason=f"needs unicorn: {SOFT_WHY}"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        for name in _ran:
            if name in report.keywords:
                _ran[name] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    tr = terminalreporter
    tr.section("accelerator backends exercised")
    tr.write_line(f"kvm:  {'yes' if _ran['kvm'] else 'no'} ({_ran['kvm']} tests passed; {KVM_WHY})")
    tr.write_line(f"soft: {'yes' if _ran['soft'] else 'no'} ({_ran['soft']} tests passed; {SOFT_WHY})")


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Assert that a test leaves no extra open fds or threads behind."""
    import threading
    import time

    fds_before = set(os.listdir("/proc/self/fd"))
    threads_before = threading.active_count()
    yield
    deadline = time.monotonic() + 5.0
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.01)
    fds_after = set(os.listdir("/proc/self/fd"))
    assert threading.active_count() <= threads_before, "threads leaked"
    leaked = fds_after - fds_before
    assert not leaked, f"fds leaked: {sorted(leaked)}"


ROOT = Path(__file__).resolve().parent.parent
GUEST_DIR = Path(os.environ.get("ACRN_GUEST_DIR", ROOT / "work-guests" / "linux"))


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


@pytest.fixture(scope="session")
def linux_guest_virtio(linux_guest: Path) -> Path:
    """``initramfs-virtio.cpio`` beside ``linux_guest``: busybox + the virtio-blk modules of the same
    kernel and an init that prints ``/mnt/guest-disk.txt`` of ``/dev/vda`` (built once, skip if
    impossible)."""
    path = linux_guest / "initramfs-virtio.cpio"
    if not path.is_file():
        script = ROOT / "scripts" / "fetch-linux-guest.py"
        done = subprocess.run(
            [sys.executable, str(script), "--dest", str(linux_guest)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0 or not path.is_file():
            pytest.skip(f"no virtio initramfs: {done.stderr.strip() or done.stdout.strip()}")
    return path
