"""The HSM fd across fork, exec and dup, from a C client through ``acrn exec``.

One open file, shared by every descriptor that refers to it, released with its VM when the last
one goes (``drivers/virt/acrn/hsm.c: acrn_dev_release`` on the last fput): the child of a fork
and a program exec'd with the fd open use the parent's VM; O_CLOEXEC closes the fd on exec; a
new CREATE_VM of the name gets the released VM's vmid back once the last reference is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ACCELS, run_exec

EXPECTED = {
    "fork": [
        "create 1",
        "parent.create_client 0",
        "parent.name_held_by_child -1/EINVAL",  # the parent closed its fd: the child's keeps the VM
        "child.unknown_cmd -1/ENOTTY",  # the fd has a VM
        "child.create_client -1/EEXIST",  # ... the parent's, with the parent's ioreq client
        "child.name_still_held -1/EINVAL",
        "child.name_free_after_last_close 1",  # released: its vmid is free again
        "child.exit 0",
    ],
    "exec": [
        "create 1",
        "parent.create_client 0",
        "child.fd_open 0",  # no FD_CLOEXEC
        "child.unknown_cmd -1/ENOTTY",
        "child.create_client -1/EEXIST",  # the same VM and client as before exec
        "child.name_held -1/EINVAL",
        "child.name_free_after_close 1",
    ],
    "cloexec": [
        "create 1",
        "parent.create_client 0",
        "child.fd_open -1/EBADF",  # closed by exec
        "child.name_free 1",  # ... and that was the last reference
    ],
    "dup": [
        "create 1",
        "getfd_cloexec 1",
        "dup_ok 1",
        "dup.getfd 0",  # dup clears FD_CLOEXEC
        "dupfd_cloexec.getfd 1",
        "setfd 0",
        "setfd.getfd 0",
        "create_client 0",
        "dup.create_client -1/EEXIST",  # one open file behind every descriptor
        "dupfd.unknown_cmd -1/ENOTTY",
        "name_held_by_dupfd -1/EINVAL",
        "dupfd.pause 0",
        "dupfd.destroy 0",
        "dupfd.unknown_cmd_after_destroy -1/EINVAL",
        "closed.unknown_cmd -1/EBADF",
    ],
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
@pytest.mark.parametrize("accel", ACCELS)
def test_fd_across_fork_exec_and_dup(
    accel: str, mode: str, cclient: Callable[[str], Path], tmp_path: Path
) -> None:
    r = run_exec(accel, [str(cclient("forkexec")), mode, f"t-{mode}"], tmp_path)
    assert r.stdout.splitlines() == EXPECTED[mode], r.stderr
