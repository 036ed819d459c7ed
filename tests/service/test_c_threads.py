"""Threads and signals on one HSM fd, from a C client through ``acrn exec``.

``clients/threads.c``: one thread blocked in ATTACH_IOREQ_CLIENT while others NOTIFY,
SET_IRQLINE, INJECT_MSI and START_VM on the same fd; a signal during ATTACH (ATTACH returns 0,
as ``drivers/virt/acrn/ioreq.c: acrn_ioreq_client_wait`` ignores the result of its wait); and
acrn-dm's Ctrl-C pattern, PAUSE_VM and DESTROY_IOREQ_CLIENT from the signal handler.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ACCELS, run_exec


@pytest.mark.parametrize("accel", ACCELS)
def test_attach_blocks_only_its_thread(accel: str, cclient: Callable[[str], Path], tmp_path: Path) -> None:
    r = run_exec(accel, [str(cclient("threads")), "multi", "t-multi"], tmp_path)
    assert r.stdout.splitlines() == [
        # 20 of each while the attacher stayed inside one ATTACH call
        "others irqline=20 msi=20 notify_einval=20 attacher_blocked_throughout=1",
        "notifier notified=52",  # the guest's read, its 50 writes and its last write
        "guest writes=50 in_order=1",
        "teardown 0 0 0",
    ], r.stderr


@pytest.mark.parametrize("mode", ["plain", "plain-restart", "plain-inside"])
@pytest.mark.parametrize("accel", ACCELS)
def test_signal_during_attach_returns_0(
    accel: str, mode: str, cclient: Callable[[str], Path], tmp_path: Path
) -> None:
    r = run_exec(accel, [str(cclient("threads")), mode, f"t-{mode}"], tmp_path)
    # ATTACH returned 0 with nothing pending; the fd still works (PAUSE, DESTROY_IOREQ_CLIENT, DESTROY_VM)
    if mode == "plain-inside":  # one signal each time, none lost whenever it lands in the call
        assert r.stdout.splitlines() == ["100 signals, 100 returns", "teardown 0 0 0"], r.stderr
    else:
        assert r.stdout.splitlines() == ["attach first=0/0 handler_ran=1", "teardown 0 0 0"], r.stderr


@pytest.mark.parametrize("mode", ["ctrlc-self", "ctrlc-other"])
@pytest.mark.parametrize("accel", ACCELS)
def test_ioctls_from_a_signal_handler(
    accel: str, mode: str, cclient: Callable[[str], Path], tmp_path: Path
) -> None:
    r = run_exec(accel, [str(cclient("threads")), mode, f"t-{mode}"], tmp_path)
    # The blocked ATTACH returns 0 when the signal interrupted it (in Linux the handler runs
    # after the ioctl returned), ENODEV when another thread ran the handler (the client was
    # destroyed under it); the next ATTACH is ENODEV.  The handler's PAUSE_VM took effect.
    first = "0/0" if mode == "ctrlc-self" else "-1/ENODEV"
    assert r.stdout.splitlines() == [
        "handler pause=0/0 destroy_client=0/0",
        f"attach first={first} next=-1/ENODEV",
        "destroy_vm 0",
    ], r.stderr
