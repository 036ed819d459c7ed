"""Shared helpers of the C-client tests: compile the clients once, run them under ``acrn exec``, and
run an ``acrn hv`` service in the background for the tests that need one shared by several clients.

The clients in ``clients/`` are compiled with gcc against the system's ``<linux/acrn.h>`` (the
header an ACRN device model is built with); without gcc or the header the tests skip and say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from acrn.service.server import _live

CLIENTS = Path(__file__).parent / "clients"
ACRN = [sys.executable, "-m", "acrn"]

#: The accelerators every C-client test runs on (markers and skip reasons from tests/conftest.py).
ACCELS = [pytest.param("kvm", marks=pytest.mark.kvm), pytest.param("soft", marks=pytest.mark.soft)]

#: Generous bound on anything a test waits for: a loaded 2-core machine may be slow, never stuck.
WAIT = 60.0


def _toolchain() -> str | None:
    """Why C clients cannot be built here, or None."""
    if shutil.which("gcc") is None:
        return "gcc not found: the C clients cannot be compiled"
    probe = subprocess.run(
        ["gcc", "-E", "-x", "c", "-"], input="#include <linux/acrn.h>\n", capture_output=True, text=True
    )
    if probe.returncode != 0:
        return "<linux/acrn.h> not found (install the Linux UAPI headers, e.g. linux-libc-dev)"
    return None


@pytest.fixture(scope="session")
def cclient(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``cclient("sample")``: the path of ``clients/sample.c`` compiled (once per session)."""
    why = _toolchain()
    if why is not None:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("cclients")
    built: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in built:
            exe = out / name
            cc = subprocess.run(
                ["gcc", "-std=gnu11", "-O1", "-g", "-Wall", "-Werror", "-pthread", "-o", str(exe),
                 str(CLIENTS / f"{name}.c")],
                capture_output=True, text=True,
            )  # fmt: skip
            assert cc.returncode == 0, f"{name}.c does not compile:\n{cc.stderr}"
            built[name] = exe
        return built[name]

    return build


def isolated_env(tmp: Path) -> dict[str, str]:
    """The environment for ``acrn`` commands: no service of the user's is found by default."""
    env = dict(os.environ)
    env["ACRN_HV_SOCKET"] = str(tmp / "no-default-service.sock")
    env.pop("XDG_RUNTIME_DIR", None)
    env.pop("LD_PRELOAD", None)
    env.pop("ACRN_EXEC_TRACE", None)
    return env


def run_exec(
    accel_or_hv: str, argv: list[str], tmp: Path, *, timeout: float = WAIT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``acrn exec --accel ACCEL -- argv`` (a private service), or ``--hv SOCKET`` for a path."""
    opt = ["--hv", accel_or_hv] if "/" in accel_or_hv else ["--accel", accel_or_hv, "--no-fallback"]
    r = subprocess.run([*ACRN, "exec", *opt, "--", *argv], capture_output=True, text=True, timeout=timeout,
                       env=isolated_env(tmp), cwd=tmp)  # fmt: skip
    if check:
        assert r.returncode == 0, f"{argv[0]} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def wait_for(what: str, cond: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll ``cond`` until it is truthy (its value is returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


class Service:
    """An ``acrn hv --socket PATH`` process started by a test."""

    def __init__(self, proc: subprocess.Popen[str], path: Path, tmp: Path) -> None:
        self.proc = proc
        self.path = path
        self.tmp = tmp

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ps(self) -> dict[str, Any]:
        """``acrn ps --json``."""
        r = subprocess.run([*ACRN, "ps", "--hv", str(self.path), "--json"], capture_output=True, text=True,
                           timeout=WAIT, env=isolated_env(self.tmp))  # fmt: skip
        assert r.returncode == 0, r.stderr
        data: dict[str, Any] = json.loads(r.stdout)
        return data

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def exec(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return run_exec(str(self.path), argv, self.tmp, **kw)

    def popen(self, argv: list[str]) -> subprocess.Popen[str]:
        """``acrn exec --hv`` in the background, stdin, stdout and stderr piped."""
        return subprocess.Popen([*ACRN, "exec", "--hv", str(self.path), "--", *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=isolated_env(self.tmp), cwd=self.tmp)  # fmt: skip

    def stop(self) -> str:
        """SIGTERM, then SIGKILL if it does not stop within WAIT; its log (stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return (self.tmp / "hv.log").read_text()


@pytest.fixture
def hv_service(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Service]:
    """A background ``acrn hv`` on a temporary socket, with the accelerator of the test's ``accel``
    parameter, else auto (``--no-fallback``: each test runs on the one accelerator it names)."""
    callspec = getattr(request.node, "callspec", None)
    accel = callspec.params.get("accel", "auto") if callspec is not None else "auto"
    path = tmp_path / "hv.sock"
    # Its log goes to a file: a pipe nobody reads could fill and stop the service.
    with open(tmp_path / "hv.log", "w") as log:
        proc = subprocess.Popen([*ACRN, "hv", "--socket", str(path), "--accel", accel, "--no-fallback"],
                                stdout=subprocess.DEVNULL, stderr=log, text=True, env=isolated_env(tmp_path),
                                start_new_session=True)  # fmt: skip
    svc = Service(proc, path, tmp_path)
    try:
        wait_for("acrn hv to listen", lambda: _live(str(path)) or proc.poll() is not None)
        if proc.poll() is not None:
            pytest.fail(f"acrn hv exited {proc.returncode}: {svc.stop()}")
        yield svc
    finally:
        with contextlib.suppress(ProcessLookupError):
            err = svc.stop()
            if proc.returncode not in (0, None):
                print(f"acrn hv exited {proc.returncode}:\n{err}", file=sys.stderr)
