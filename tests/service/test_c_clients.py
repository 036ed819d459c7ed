"""Several C clients on one ``acrn hv``, and a client killed with a running VM.

On ACRN one hypervisor serves every process that opens ``/dev/acrn_hsm``: VM names are unique
across processes (a second CREATE_VM of a held name is EINVAL), vmids are global, and the kernel
releases a process's VM however it dies.  The tests start ``acrn hv --socket`` themselves (the
``hv_service`` fixture), run clients with ``acrn exec --hv``, and look at the service from outside:
``acrn ps --json``, and its threads, fds and mappings in /proc.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .conftest import ACCELS, WAIT, Service, wait_for


def _readline(p: subprocess.Popen[str], timeout: float = WAIT) -> str:
    """The next line of the client's stdout (fails the test after ``timeout`` s or at EOF)."""
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"no output from the client within {timeout:.0f}s")
    line = p.stdout.readline()
    if not line:
        err = p.stderr.read() if p.stderr is not None else ""
        pytest.fail(f"the client ended (exit {p.wait()}): {err}")
    return line.rstrip("\n")


@contextmanager
def holder(
    svc: Service, exe: Path, name: str, *extra: str
) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """``holder NAME`` under ``acrn exec --hv``: (the acrn exec process, the holder's pid, vmid)."""
    p = svc.popen([str(exe), name, *extra])
    pid = 0
    try:
        pid = int(_readline(p).removeprefix("pid "))
        line = _readline(p)
        assert line.startswith("vmid "), line
        yield p, pid, int(line.removeprefix("vmid "))
    finally:
        assert p.stdin is not None
        p.stdin.close()  # the holder pauses and destroys its VM and exits
        try:
            p.wait(WAIT)
        except subprocess.TimeoutExpired:
            if pid:
                os.kill(pid, signal.SIGKILL)
            p.kill()
            p.wait()
            raise


def _vms(st: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {vm["vmid"]: vm for vm in st["vms"]}


@pytest.mark.parametrize("accel", ACCELS)
def test_two_clients_share_one_hypervisor(
    accel: str, hv_service: Service, cclient: Callable[[str], Path]
) -> None:
    exe = cclient("holder")
    with (
        holder(hv_service, exe, "vm-a") as (_, pid_a, vmid_a),
        holder(hv_service, exe, "vm-b") as (_, pid_b, vmid_b),
    ):
        assert vmid_a != vmid_b  # vmids are global
        vms = _vms(hv_service.ps())
        assert vms[vmid_a]["name"] == "vm-a" and vms[vmid_a]["pid"] == pid_a
        assert vms[vmid_b]["name"] == "vm-b" and vms[vmid_b]["pid"] == pid_b
        assert vms[vmid_a]["state"] == vms[vmid_b]["state"] == "RUNNING"
        # A third process asking for a name another one holds: EINVAL, as on ACRN.
        r = hv_service.exec([str(exe), "vm-a"], check=False)
        assert r.returncode == 1 and r.stdout.splitlines()[1:] == ["create -1/EINVAL"], r.stderr
        assert set(_vms(hv_service.ps())) == {vmid_a, vmid_b}
    wait_for("both VMs to go", lambda: not hv_service.ps()["vms"])


def _memfd_maps(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return sum(1 for line in f if "memfd:pyacrn" in line)


@pytest.mark.parametrize("accel", ACCELS)
def test_kill_9_of_a_client_releases_its_running_vm(
    accel: str, hv_service: Service, cclient: Callable[[str], Path]
) -> None:
    exe = cclient("holder")
    svc = hv_service
    # Warm up: one VM's whole life, so that what the service keeps for good (the accelerator,
    # its first threads) is in the baseline.
    with holder(svc, exe, "warm-up", "busy") as (p, _, _):
        assert _readline(p) == "running"
    wait_for("the warm-up VM to go", lambda: not svc.ps()["vms"] and svc.ps()["open_files"] == 0)
    threads, fds, maps = svc.threads(), svc.fds(), _memfd_maps(svc.pid)

    with holder(svc, exe, "victim", "busy") as (p, pid, vmid):
        assert _readline(p) == "running"  # the guest's I/O goes round the ioreq loop
        vms = _vms(svc.ps())
        assert vms[vmid]["pid"] == pid and vms[vmid]["state"] == "RUNNING"
        assert svc.threads() > threads and svc.fds() > fds and _memfd_maps(svc.pid) > maps
        os.kill(pid, signal.SIGKILL)
        assert p.wait(WAIT) == 128 + signal.SIGKILL  # acrn exec passes the signal on as a shell does

    wait_for("the VM to be released", lambda: not svc.ps()["vms"] and svc.ps()["open_files"] == 0)
    wait_for(f"the service's threads to drop back to {threads}", lambda: svc.threads() <= threads)
    wait_for(f"the service's fds to drop back to {fds}", lambda: svc.fds() <= fds)
    wait_for("the client's memory to be unmapped", lambda: _memfd_maps(svc.pid) <= maps)
    # The name is free again, and the service still serves.
    with holder(svc, exe, "victim") as (_, _, vmid2):
        assert vmid2 == vmid
