#!/usr/bin/env python3
"""Build ACRN's own device model, acrn-dm, from an ACRN source tree or tarball, and cache it.

    python scripts/build-acrn-dm.py SOURCE [--out DIR]

SOURCE is an unpacked ACRN tree (the directory holding ``devicemodel/``, or any directory one
level above it) or a ``.tar.gz`` of one.  The build is ACRN's own two make steps, unchanged:
``misc/services/acrn_manager`` (libacrn-mngr, which acrn-dm links) and then ``devicemodel``, with

* ``IASL_MIN_VER=20190703``: acrn-dm's Makefile otherwise bakes in a minimum iasl version newer
  than Debian 12's acpica-tools, and acrn-dm then refuses to start;
* ``CC="gcc -Wno-error=address"``: gcc 12 stops on a ``-Waddress`` warning in ``hw/acpi/core.c``.

The result is cached in ``DIR`` (default: the repository's ignored ``work-guests/acrn-dm/``) under
a key made of the tarball's sha256 (or, for a directory, a digest of its file names, sizes and
mtimes), so a second call prints the path at once.  Missing Debian build packages are installed
with apt-get when running as root.  The last line on stdout is the binary's path.

Exit status: 0 built or cached; 1 the build itself failed (the log's path is printed);
3 the build cannot run here (no such source, missing packages and not root, no make/gcc) -- tests
skip on 3 and fail on 1.  Either failure is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "work-guests" / "acrn-dm"

# Debian 12 packages acrn-dm v3.3 needs to build (its Makefile's pkg-config and -l lists), plus
# acpica-tools: acrn-dm runs `iasl` at start-up to compile the guest's DSDT.
BUILD_PACKAGES = (
    "gcc",
    "make",
    "libpciaccess-dev",
    "libusb-1.0-0-dev",
    "liburing-dev",
    "libcjson-dev",
    "libpixman-1-dev",
    "libsdl2-dev",
    "libegl-dev",
    "libgles-dev",
    "uuid-dev",
    "libssl-dev",
    "acpica-tools",
)
IASL_MIN_VER = "20190703"
BUILD_CC = "gcc -Wno-error=address"
EXIT_FAILED = 1
EXIT_CANNOT_RUN = 3


class BuildError(Exception):
    """The build ran and failed."""


class CannotBuild(Exception):
    """The build cannot run on this machine (or the source is not an ACRN tree)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tree_digest(tree: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(tree.rglob("*")):
        if p.is_file() and "build" not in p.relative_to(tree).parts[:1]:
            st = p.stat()
            h.update(f"{p.relative_to(tree)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _acrn_root(path: Path) -> Path:
    """The directory holding ``devicemodel/`` (the path itself or one of its subdirectories)."""
    if (path / "devicemodel" / "Makefile").is_file():
        return path
    for sub in sorted(path.iterdir()):
        if (sub / "devicemodel" / "Makefile").is_file():
            return sub
    raise CannotBuild(f"{path} is not an ACRN source tree (no devicemodel/Makefile)")


def cache_key(source: Path) -> str:
    if source.is_dir():
        return "tree-" + _tree_digest(_acrn_root(source))[:16]
    return _sha256(source)[:16]


def missing_packages() -> list[str]:
    if shutil.which("dpkg-query") is None:
        return []  # not Debian: let make say what is missing
    missing = []
    for pkg in BUILD_PACKAGES:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in done.stdout:
            missing.append(pkg)
    return missing


def install_packages(pkgs: list[str]) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise CannotBuild(f"missing build packages (install them as root: apt-get install {' '.join(pkgs)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", *pkgs]
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
        # Empty or stale package lists (a fresh container): refresh once and retry.
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            raise CannotBuild(f"apt-get install {' '.join(pkgs)} failed: {last[0]}")


def _run_logged(cmd: list[str], cwd: Path, log: Path, what: str) -> None:
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        raise BuildError(
            f"{what} failed (exit {done.returncode}); log: {log}; last line: {tail[0] if tail else '?'}"
        )


def build(source: Path, out: Path, jobs: int = 2) -> Path:
    """Build (or find cached) acrn-dm for ``source``; returns the binary's path."""
    if not source.exists():
        raise CannotBuild(f"no such ACRN source: {source}")
    key = cache_key(source)
    dest = out / key
    binary = dest / "acrn-dm"
    if os.access(binary, os.X_OK):
        return binary
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time (CI, parallel sessions)
        if os.access(binary, os.X_OK):
            return binary
        missing = missing_packages()
        if missing:
            install_packages(missing)
        for tool in ("make", "gcc"):
            if shutil.which(tool) is None:
                raise CannotBuild(f"{tool} is not installed")
        with tempfile.TemporaryDirectory(prefix="build-", dir=out) as tmp:
            work = Path(tmp)
            if source.is_dir():
                shutil.copytree(_acrn_root(source), work / "src", symlinks=True)
                tree = work / "src"
            else:
                try:
                    with tarfile.open(source) as tar:
                        tar.extractall(work / "src", filter="data")
                except (tarfile.TarError, OSError) as e:
                    raise CannotBuild(f"cannot unpack {source}: {e}") from None
                tree = _acrn_root(work / "src")
            log = out / f"{key}.log"
            log.write_text("")
            (tree / "build" / "services").mkdir(parents=True)
            _run_logged(
                ["make", "-C", "misc/services/acrn_manager", f"OUT_DIR={tree}/build/services"],
                tree,
                log,
                "make acrn_manager",
            )
            _run_logged(
                [
                    "make",
                    "-C",
                    "devicemodel",
                    f"TOOLS_OUT={tree}/build",
                    f"DM_OBJDIR={tree}/build/dm",
                    f"IASL_MIN_VER={IASL_MIN_VER}",
                    f"CC={BUILD_CC}",
                    f"-j{jobs}",
                ],
                tree,
                log,
                "make devicemodel",
            )
            built = tree / "build" / "dm" / "acrn-dm"
            if not built.is_file():
                raise BuildError(f"make succeeded but left no build/dm/acrn-dm; log: {log}")
            staging = work / "out"
            staging.mkdir()
            shutil.copy2(built, staging / "acrn-dm")
            ovmf = tree / "devicemodel" / "bios" / "OVMF.fd"
            if ovmf.is_file():
                shutil.copy2(ovmf, staging / "OVMF.fd")
            # Atomic publish: a concurrent reader sees either no directory or a complete one.
            os.replace(staging, dest)
    return binary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="ACRN source tree or .tar.gz")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"cache directory (default {DEFAULT_OUT})")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    try:
        binary = build(args.source.resolve(), args.out.resolve(), args.jobs)
    except CannotBuild as e:
        print(f"build-acrn-dm: cannot build: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except BuildError as e:
        print(f"build-acrn-dm: {e}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:
        print(f"build-acrn-dm: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return EXIT_FAILED
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
