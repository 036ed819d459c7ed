"""Every one of the 27 HSM ioctls, with its errno cases, from a C client through ``acrn exec``.

``clients/ioctl_table.c`` runs the script of :func:`ioctl_script.table` on ``/dev/acrn_hsm`` as
the preload library gives it (the service behind a Unix socket); the same script runs on the
emulated HSM in this process.  The two outputs must be equal line for line (return value, errno
and the bytes written back), and the named cases must give what the HSM gives on ACRN.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from acrn import uapi

from .conftest import ACCELS, run_exec
from .ioctl_script import run_inprocess, table


def _parse(lines: list[str]) -> dict[str, tuple[int, str, str]]:
    out = {}
    for line in lines:
        label, ret, err, shown = line.split()
        out[label] = (int(ret), err, shown)
    return out


@pytest.mark.parametrize("accel", ACCELS)
def test_ioctl_table_matches_the_in_process_hsm(
    accel: str, cclient: Callable[[str], Path], tmp_path: Path
) -> None:
    script = table()
    (tmp_path / "table.txt").write_text(script.text())
    exe = cclient("ioctl_table")
    r = run_exec(accel, [str(exe), "table.txt"], tmp_path)
    got = r.stdout.splitlines()
    want = run_inprocess(script.text(), accel)
    assert len(got) == len(want), r.stderr
    diff = [f"C: {g}\n   in-process: {w}" for g, w in zip(got, want, strict=True) if g != w]
    assert not diff, "the service and the in-process HSM disagree:\n" + "\n".join(diff)
    results = _parse(got)
    wrong = {
        label: (results[label][:2], want_)
        for label, want_ in script.expect.items()
        if results[label][:2] != want_
    }
    assert not wrong, f"named cases that differ from ACRN (got, expected): {wrong}"
    # Each of the 27 was called on a fresh fd (+ an unknown command and one of another type), on
    # a destroyed VM's fd, and with a VM.
    assert sum(1 for label in results if label.split(".")[1] == "fresh") == 28
    assert sum(1 for label in results if label.split(".")[1] == "destroyed") == 26
    with_vm = {
        line.split()[2]
        for line in script.lines
        if line.startswith("ioctl ") and line.split()[1].split(".")[1] not in ("fresh", "destroyed")
    }
    assert {n.removeprefix("ACRN_IOCTL_") for n in uapi.IOCTLS} <= with_vm
