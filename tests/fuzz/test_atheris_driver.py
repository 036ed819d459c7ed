"""The atheris driver of the HSM fuzzing harness (issue 7): it runs, it reaches the ioctls, it finds bugs.

``one_input`` is exercised here without libFuzzer (seeded random inputs and hand-made ones whose
bytes follow the layouts documented on each operation), then, where atheris is installed, as a
short libFuzzer run in a subprocess.  The long run is on demand:
``PYACRN_ATHERIS_RUNS=200000 python -m pytest tests/fuzz/test_atheris_driver.py -m slow -s``
(or the script itself: ``python tests/fuzz/atheris_hsm.py -runs=200000 -max_len=512``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from acrn import uapi
from acrn.emu.hsm import driver, memseg

from . import atheris_hsm
from .atheris_hsm import OP_NAMES, STATS, ByteReader, Finding, one_input
from .harness import IOCTLS, UNKNOWN_IOCTLS, AddressPool

SCRIPT = Path(atheris_hsm.__file__)
needs_atheris = pytest.mark.skipif(
    atheris_hsm.atheris is None, reason="atheris not installed (Linux x86_64 wheel only): pip install atheris"
)


# ------------------------------------------------------------------------------ input encoding
def op(name: str) -> bytes:
    return bytes([OP_NAMES.index(name)])


def u8(v: int) -> bytes:
    return bytes([v])


def u16(v: int) -> bytes:
    return v.to_bytes(2, "little")


def u32(v: int) -> bytes:
    return v.to_bytes(4, "little")


def bad(addr_index: int) -> bytes:
    """arg_form 5: AddressPool.bad[addr_index]."""
    return u8(5) + u8(addr_index)


FD0 = u8(0)
#: open_vm: ioreq page 0, name "fuzz-a", RAM at page 1, registers set.
OPEN_VM = op("open_vm") + u8(0) + u8(1)
#: lifecycle selectors: _IO_CMDS[:4] * 3 + _IO_CMDS[4:] (DESTROY, START, PAUSE, RESET x3, then clients).
START, PAUSE, CREATE_CLIENT = u8(1), u8(2), u8(12)


def lifecycle(which: bytes) -> bytes:
    return op("lifecycle") + FD0 + which + u8(0)  # argument 0


def any_ioctl(cmd: int, data: bytes, form: bytes, fd: bytes = FD0) -> bytes:
    return (
        op("any_ioctl") + fd + u8(0) + u8((IOCTLS + UNKNOWN_IOCTLS).index(cmd)) + u16(len(data)) + data + form
    )


@pytest.fixture
def stats() -> Iterator[atheris_hsm.Stats]:
    STATS.reset()
    yield STATS
    STATS.reset()


# ------------------------------------------------------------------------------ the driver runs
def test_one_input_runs_seeded_random_inputs(stats: atheris_hsm.Stats, no_leaks: None) -> None:
    """Few hundred random programs: no finding, and the operations really reached the HSM."""
    rng = random.Random(7)
    for _ in range(300):
        one_input(rng.randbytes(rng.randrange(0, 400)))
    assert stats.inputs == 300
    assert set(stats.ops) == set(OP_NAMES), set(OP_NAMES) - set(stats.ops)
    assert stats.succeeded["ACRN_IOCTL_CREATE_VM"] >= 50
    assert stats.succeeded["ACRN_IOCTL_SET_MEMSEG"] >= 1
    assert stats.succeeded["ACRN_IOCTL_START_VM"] >= 1
    assert len(stats.tried) >= len(IOCTLS), "every known ioctl and some raw numbers tried"
    assert {"EINVAL", "EFAULT", "ENOTTY"} <= set(stats.errnos)


def test_empty_and_one_byte_inputs_are_handled(stats: atheris_hsm.Stats) -> None:
    for data in (b"", *(bytes([i]) for i in range(len(OP_NAMES)))):
        one_input(data)
    assert stats.inputs == 1 + len(OP_NAMES)


def test_set_memseg_with_unmapped_vma_base_is_efault(stats: atheris_hsm.Stats) -> None:
    """CREATE_VM, then SET_MEMSEG of one RAM page at a PROT_NONE vma_base: the pin faults."""
    none_page = AddressPool.SCRATCH_PAGES + 2  # AddressPool.pick selector of bad[2], the PROT_NONE page
    data = OPEN_VM + op("memseg") + FD0
    data += u8(0) + u8(0) + u8(0)  # RAM, RWX, user_vm_pa 0
    data += u8(1) + u8(0)  # one page
    data += u8(1) + u8(none_page) + u16(0)  # vma_base from the pool
    data += u8(1)  # SET_MEMSEG
    one_input(data)
    assert stats.succeeded["ACRN_IOCTL_CREATE_VM"] == 1
    assert stats.succeeded["ACRN_IOCTL_SET_MEMSEG"] == 1  # open_vm's own RAM
    assert stats.refusals == {("ACRN_IOCTL_SET_MEMSEG", "EFAULT"): 1}


def test_struct_ioctl_with_kernel_address_pointer_is_efault(stats: atheris_hsm.Stats) -> None:
    """SET_VCPU_REGS whose pointer is in the kernel half: copy_from_user fails."""
    one_input(OPEN_VM + any_ioctl(uapi.ACRN_IOCTL_SET_VCPU_REGS, b"", bad(6)))
    assert stats.refusals == {("ACRN_IOCTL_SET_VCPU_REGS", "EFAULT"): 1}


def test_create_vm_with_read_only_ioreq_page_is_efault(stats: atheris_hsm.Stats) -> None:
    """CREATE_VM whose ioreq_buf is the read-only page: the pin (FOLL_WRITE) fails, folded into EINVAL."""
    data = op("create_vm") + u8(1) + u8(0)  # name "fuzz-a", reserved 0
    data += u8(0) + u8(0)  # affinity 0, vm_flag 0
    data += u8(AddressPool.SCRATCH_PAGES + 4) + u16(0)  # ioreq_buf: bad[4], the read-only page
    data += u8(0)  # as a buffer
    one_input(data)
    # acrn_ioreq_init's -EFAULT is reported as -EINVAL by acrn_vm_create.
    assert stats.refusals == {("ACRN_IOCTL_CREATE_VM", "EINVAL"): 1}


def test_unknown_command_is_einval_before_create_vm_and_enotty_after(stats: atheris_hsm.Stats) -> None:
    unknown = UNKNOWN_IOCTLS[2]
    # The first fd is opened on demand (no selector byte); open_vm opens a second one.
    one_input(any_ioctl(unknown, b"", u8(7), fd=b"") + OPEN_VM + any_ioctl(unknown, b"", u8(7), fd=u8(1)))
    name = hex(unknown)
    assert stats.refusals[name, "EINVAL"] == 1
    assert stats.refusals[name, "ENOTTY"] == 1


def test_blocking_attach_is_released_by_destroy_ioreq_client(
    stats: atheris_hsm.Stats, no_leaks: None
) -> None:
    """ATTACH with nothing pending waits; DESTROY_IOREQ_CLIENT wakes it with ENODEV
    (acrn_ioreq_client_wait)."""
    one_input(OPEN_VM + lifecycle(CREATE_CLIENT) + op("attach") + FD0 + u8(0))
    assert stats.succeeded["ACRN_IOCTL_CREATE_IOREQ_CLIENT"] == 1
    assert stats.succeeded["ACRN_IOCTL_DESTROY_IOREQ_CLIENT"] == 1
    assert stats.refusals[("ACRN_IOCTL_ATTACH_IOREQ_CLIENT", "ENODEV")] == 1


def test_blocking_attach_is_released_by_close(stats: atheris_hsm.Stats, no_leaks: None) -> None:
    one_input(OPEN_VM + lifecycle(CREATE_CLIENT) + op("attach") + FD0 + u8(1))
    attach = {k: v for k, v in stats.refusals.items() if k[0] == "ACRN_IOCTL_ATTACH_IOREQ_CLIENT"}
    # ENODEV when it waited; EBADF or EINVAL when the close came first.
    assert sum(attach.values()) == 1 and {e for _, e in attach} <= {"ENODEV", "EBADF", "EINVAL"}


def test_attach_with_pending_request_returns_at_once(stats: atheris_hsm.Stats) -> None:
    """A guest I/O request is pending for the default client: ATTACH returns 0 without a thread."""
    data = OPEN_VM + lifecycle(CREATE_CLIENT) + lifecycle(START)
    data += op("guest_io") + FD0 + u8(0) + u8(0) + u8(1)  # vCPU 0 writes port 0x3F8
    data += op("attach") + FD0
    one_input(data)
    assert stats.succeeded["ACRN_IOCTL_START_VM"] == 1
    assert stats.succeeded["ACRN_IOCTL_ATTACH_IOREQ_CLIENT"] == 1


def test_raw_pointers_never_leave_the_pool() -> None:
    """The harness' own safety: a writable address outside the pool is moved into it."""
    session = atheris_hsm.Session(ByteReader(b""))
    try:
        heap = bytearray(64)
        addr = ctypes.addressof((ctypes.c_char * 64).from_buffer(heap))
        pool = session.pool  # the driver's pool (the safety itself is tested in test_harness.py)
        assert pool.in_scratch(pool.safe_ptr(addr))
        assert pool.safe_ptr(0xFFFF_8000_0000_0000) == 0xFFFF_8000_0000_0000
        assert pool.safe_ptr(pool.ro_page) == pool.ro_page
        assert pool.in_scratch(pool.safe_ioreq_buf(addr, None) & ~0xFFF, 4096)
    finally:
        session.close()


# ------------------------------------------------------------------------------ it finds bugs
def test_driver_reports_an_unexpected_exception(
    monkeypatch: pytest.MonkeyPatch, stats: atheris_hsm.Stats
) -> None:
    def broken(f: object, uarg: object) -> int:
        raise RuntimeError("emulator bug")

    monkeypatch.setitem(driver._HANDLERS, uapi.ACRN_IOCTL_START_VM, broken)
    with pytest.raises(RuntimeError, match="emulator bug"):
        one_input(OPEN_VM + lifecycle(START))


def test_driver_reports_a_disallowed_errno(monkeypatch: pytest.MonkeyPatch, stats: atheris_hsm.Stats) -> None:
    monkeypatch.setitem(driver._HANDLERS, uapi.ACRN_IOCTL_PAUSE_VM, lambda f, uarg: -errno.EIO)
    with pytest.raises(Finding, match="PAUSE_VM: errno EIO"):
        one_input(OPEN_VM + lifecycle(PAUSE))


def test_driver_reports_a_resource_left_after_close(
    monkeypatch: pytest.MonkeyPatch, stats: atheris_hsm.Stats
) -> None:
    """RAM pins not dropped at release: check_released fails at the end of the input."""
    monkeypatch.setattr(memseg, "all_ram_unmap", lambda vm: None)
    with pytest.raises(AssertionError):
        one_input(OPEN_VM)


def test_driver_reports_a_broken_invariant(monkeypatch: pytest.MonkeyPatch, stats: atheris_hsm.Stats) -> None:
    """DESTROY that forgets to unpin the ioreq page: the pin count no longer matches the fds."""
    real = driver._HANDLERS[uapi.ACRN_IOCTL_DESTROY_VM]

    def leaky_destroy(f: driver.HsmFile, uarg: object) -> int:
        f.vm.ioreq_buf = None  # forgotten by the driver, still pinned
        return real(f, uarg)  # type: ignore[arg-type]

    monkeypatch.setitem(driver._HANDLERS, uapi.ACRN_IOCTL_DESTROY_VM, leaky_destroy)
    with pytest.raises(AssertionError):
        one_input(OPEN_VM + lifecycle(u8(0)))


# ------------------------------------------------------------------------------ providers and main
@needs_atheris
def test_byte_reader_reads_as_atheris_provider_does() -> None:
    rng = random.Random(3)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 40))
        a, b = ByteReader(data), atheris_hsm.atheris.FuzzedDataProvider(data)
        for _ in range(12):
            k = rng.choice([1, 2, 3, 4, 8])
            if rng.random() < 0.3:
                assert a.ConsumeBytes(k * 3) == b.ConsumeBytes(k * 3)
            else:
                assert a.ConsumeUInt(k) == b.ConsumeUInt(k)
            assert a.remaining_bytes() == b.remaining_bytes()


def test_main_without_atheris_exits_2_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(atheris_hsm, "atheris", None)
    assert atheris_hsm.main(["atheris_hsm.py", "-runs=1"]) == 2
    assert "pip install" in capsys.readouterr().err


def _run_script(
    tmp_path: Path, runs: int, max_len: int, timeout: float
) -> tuple[subprocess.CompletedProcess[str], str]:
    args = [sys.executable, str(SCRIPT), f"-runs={runs}", f"-max_len={max_len}", "-seed=1"]
    args.append(f"-artifact_prefix={tmp_path}{os.sep}")
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    return proc, proc.stdout


@needs_atheris
def test_libfuzzer_short_run_prints_its_counts(tmp_path: Path) -> None:
    """CI: a short coverage-guided run of the script; it exits 0 and prints what it executed."""
    proc, out = _run_script(tmp_path, 2000, 256, 300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"atheris_hsm: (\d+) inputs, (\d+) operations, (\d+) ioctls", out)
    assert m is not None, out
    assert int(m[1]) >= 2000  # libFuzzer's own first empty input comes on top
    assert int(m[3]) > 1000
    assert "errno: EINVAL" in out
    assert "instrumented" in proc.stderr and "DONE" in proc.stderr


@pytest.mark.slow
@needs_atheris
def test_libfuzzer_long_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On demand: PYACRN_ATHERIS_RUNS inputs (default 200000); prints the counts and histogram."""
    runs = int(os.environ.get("PYACRN_ATHERIS_RUNS", "200000"))
    proc, out = _run_script(tmp_path, runs, 512, 6 * 3600)
    with capsys.disabled():
        print("\n" + out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{runs} inputs" in out or re.search(r"atheris_hsm: \d+ inputs", out)
