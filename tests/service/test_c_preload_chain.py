"""acrn exec keeps the program's own LD_PRELOAD entries, and leaves what is not the HSM alone."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import isolated_env, run_exec

pytestmark = pytest.mark.soft

OTHER_PRELOAD = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void hello(void) { dprintf(2, "OTHER-PRELOAD pid %d\n", getpid()); }
"""

PIPE_IOCTL = r"""
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>
int main(void) {
    int p[2]; int n = -1;
    if (pipe(p) || write(p[1], "abc", 3) != 3 || ioctl(p[0], FIONREAD, &n)) { perror("pipe ioctl"); return 1; }
    printf("FIONREAD=%d\n", n);
    return n == 3 ? 0 : 1;
}
"""


def _build(tmp: Path, name: str, src: str, *extra: str) -> Path:
    (tmp / f"{name}.c").write_text(src)
    out = tmp / name
    cc = subprocess.run(["gcc", "-O1", "-Wall", *extra, "-o", str(out), str(tmp / f"{name}.c")],
                        capture_output=True, text=True)  # fmt: skip
    if cc.returncode:
        pytest.skip(f"cannot build {name}: {cc.stderr.strip()}")
    return out


def test_other_preloads_are_kept_and_the_device_still_works(
    cclient: Callable[[str], Path], tmp_path: Path
) -> None:
    other = _build(tmp_path, "libother.so", OTHER_PRELOAD, "-shared", "-fPIC")
    env = isolated_env(tmp_path)
    env["LD_PRELOAD"] = str(other)
    r = subprocess.run(
        [sys.executable, "-m", "acrn", "exec", "--accel", "soft", "--", str(cclient("sample")), "chain"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Hi!" in r.stdout  # the preload library made /dev/acrn_hsm exist
    assert "OTHER-PRELOAD" in r.stderr  # and the program's own preload ran too
    shown = subprocess.run(
        [sys.executable, "-m", "acrn", "exec", "--accel", "soft", "--", "sh", "-c", 'echo "$LD_PRELOAD"'],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    entries = shown.stdout.split()
    assert entries[-1] == str(other) and "_preload" in entries[0]


def test_ioctls_on_other_files_are_untouched(tmp_path: Path) -> None:
    prog = _build(tmp_path, "pipe_ioctl", PIPE_IOCTL)
    r = run_exec("soft", [str(prog)], tmp_path)
    assert r.stdout.strip() == "FIONREAD=3"
