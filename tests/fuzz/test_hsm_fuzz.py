"""Stateful fuzzing of the emulated HSM ioctl surface (hypothesis; issue 7 part 1).

Random sequences over up to three fds: CREATE_VM with good and bad ioreq pages, every _IO ioctl,
struct ioctls with well-formed, random and short arguments passed as buffers or raw pointers
(including unmapped, read-only and kernel addresses), by-value arguments, SET_MEMSEG on random user
ranges, the interrupt-monitor page, ioeventfd/irqfd with real and bogus fds, ATTACH (released by
a "signal"), guest I/O requests posted as a vCPU would, and close at any point.

After every step: no exception other than the ioctl's OSError, every errno one docs/ioctls.md allows
for that ioctl (``harness.ALLOWED_ERRNO``), and the invariants of ``harness.check_invariants``.
At the end, all fds are closed and nothing may be left (hypervisor VMs, pins, registrations,
runtime VMs, accelerator VMs, threads, fds).

CI runs a short fuzz (``PYACRN_FUZZ_EXAMPLES``, default 25 sequences of up to 40 steps); the long
run is ``python -m pytest tests/fuzz -m slow -s`` (``PYACRN_FUZZ_LONG_EXAMPLES``, default 2000), and
it prints how many sequences and ioctls it executed.
"""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import os
import sys
import threading
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from acrn import uapi
from acrn.emu.hsm import HsmFile
from acrn.emu.machine import Machine

from .harness import (
    IOCTLS,
    UNKNOWN_IOCTLS,
    AddressPool,
    NullAccelerator,
    allowed,
    check_invariants,
    check_released,
    open_fds,
)

STATS = {"sequences": 0, "ioctls": 0, "errors": 0}
#: Successful calls per ioctl name: shows how deep the walk got.
SUCCEEDED: Counter[str] = Counter()

_S = ctypes.sizeof
_NAMES = [b"", b"fuzz-a", b"fuzz-b", b"POST_STD_VM1", b"POST_RT_VM1", b"PRE_STD_VM1", b"ACRN_Service_VM"]
_IO_CMDS = [
    uapi.ACRN_IOCTL_DESTROY_VM,
    uapi.ACRN_IOCTL_START_VM,
    uapi.ACRN_IOCTL_PAUSE_VM,
    uapi.ACRN_IOCTL_RESET_VM,
    uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT,
    uapi.ACRN_IOCTL_DESTROY_IOREQ_CLIENT,
    uapi.ACRN_IOCTL_CLEAR_VM_IOREQ,
]
_STRUCT_CMDS = [c for c in IOCTLS if isinstance(uapi.IOCTL_ARG.get(c), type)]
u64 = st.integers(0, (1 << 64) - 1)
small = st.integers(0, 20)


class HsmFuzz(RuleBasedStateMachine):
    fds = Bundle("fds")

    def __init__(self) -> None:
        super().__init__()
        self.accel = NullAccelerator()
        self.machine = Machine(accel="soft")
        self.machine.runtime.set_accelerator(self.accel)  # type: ignore[arg-type]
        self.files: list[HsmFile] = []
        # Every argument goes through pool.make_safe (see AddressPool): writes stay in scratch.
        self.pool = AddressPool(self.machine, self.files)
        self.eventfds: list[int] = []
        STATS["sequences"] += 1

    # ------------------------------------------------------------------ the checked call
    def ioctl(self, f: HsmFile, cmd: int, arg: object) -> int | None:
        arg = self.pool.make_safe(cmd, arg)
        has_vm = f.vm.valid
        STATS["ioctls"] += 1
        try:
            ret = f.ioctl(cmd, arg)
        except OSError as e:
            STATS["errors"] += 1
            name = uapi.IOCTL_NAMES.get(cmd & 0xFFFFFFFF, hex(cmd))
            ok = allowed(cmd & 0xFFFFFFFF, has_vm)
            assert e.errno in ok, f"{name}: errno {errno.errorcode.get(e.errno or 0)} not in {ok}"
            return None
        SUCCEEDED[uapi.IOCTL_NAMES.get(cmd & 0xFFFFFFFF, hex(cmd))] += 1
        return ret

    def arg_form(self, cmd: int, data: bytes, form: int, size: int) -> object:
        """The same bytes as a buffer, a raw pointer into scratch memory, short, or a bad pointer."""
        if form == 0:
            return bytearray(data)
        if form == 1:
            # Scratch page 7, moved by the pool when a write-back could reach a live ioreq page.
            return self.pool.place(cmd, data.ljust(size, b"\0"), self.pool.page(7))
        if form == 2:
            return bytearray(data[: max(0, size - 1 - (len(data) % 7))])
        if form == 3:
            return bytes(data)  # immutable: a temporary copy, never written back
        return self.pool.bad[form % len(self.pool.bad)]

    # ------------------------------------------------------------------ fds
    @rule(target=fds)
    def open_fd(self) -> HsmFile:
        f = self.machine.open()
        self.files.append(f)
        return f

    @rule(target=fds, name=st.sampled_from([b"", b"", b"fuzz-a", b"POST_RT_VM1"]), page=st.integers(0, 7))
    def open_vm(self, name: bytes, page: int) -> HsmFile:
        """A well-formed CREATE_VM, RAM and a valid register state, so that later steps reach deep states."""
        f = self.open_fd()
        req = uapi.acrn_vm_creation()
        ctypes.memmove(req.uuid.b, name.ljust(16, b"\0"), 16)
        req.ioreq_buf = self.pool.page(page)
        if self.ioctl(f, uapi.ACRN_IOCTL_CREATE_VM, req) is None:
            return f
        m = uapi.acrn_vm_memmap(
            type=uapi.ACRN_MEMMAP_RAM, attr=uapi.ACRN_MEM_ACCESS_RWX, user_vm_pa=0, len=4096
        )
        m.vma_base = self.pool.page(page + 1)
        self.ioctl(f, uapi.ACRN_IOCTL_SET_MEMSEG, m)
        r = uapi.acrn_vcpu_regs()
        r.vcpu_regs.cr0, r.vcpu_regs.cs_ar, r.vcpu_regs.cs_limit = 0x30, 0x9F, 0xFFFF
        self.ioctl(f, uapi.ACRN_IOCTL_SET_VCPU_REGS, r)
        return f

    @rule(f=consumes(fds))
    def close_fd(self, f: HsmFile) -> None:
        f.release()
        with pytest.raises(OSError) as e:
            f.ioctl(uapi.ACRN_IOCTL_PAUSE_VM, 0)
        assert e.value.errno == errno.EBADF

    # ------------------------------------------------------------------ lifecycle
    @rule(
        f=fds,
        name=st.sampled_from(_NAMES),
        page=st.integers(0, 40),
        offset=st.integers(0, 4095),
        reserved=st.sampled_from([0, 0, 0, 1, 0x10000]),
        affinity=st.sampled_from([0, 0, 0b10, 0b1110, 0b1_0000, 1 << 63]),
        flag=st.sampled_from([0, 0, uapi.GUEST_FLAG_IO_COMPLETION_POLLING, 1 << 1, (1 << 64) - 1]),
        form=st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5]),
    )
    def create_vm(
        self,
        f: HsmFile,
        name: bytes,
        page: int,
        offset: int,
        reserved: int,
        affinity: int,
        flag: int,
        form: int,
    ) -> None:
        req = uapi.acrn_vm_creation()
        ctypes.memmove(req.uuid.b, name.ljust(16, b"\0"), 16)
        req.reserved0 = reserved & 0xFFFF
        req.reserved1 = reserved >> 16
        req.cpu_affinity = affinity
        req.vm_flag = flag
        req.ioreq_buf = self.pool.pick(page, offset)
        self.ioctl(
            f, uapi.ACRN_IOCTL_CREATE_VM, self.arg_form(uapi.ACRN_IOCTL_CREATE_VM, bytes(req), form, _S(req))
        )

    @rule(f=fds, cmd=st.sampled_from(_IO_CMDS), arg=st.one_of(st.just(0), u64))
    def io_ioctl(self, f: HsmFile, cmd: int, arg: int) -> None:
        self.ioctl(f, cmd, arg)

    @rule(f=fds, cmd=st.sampled_from(_IO_CMDS[:4] * 3 + _IO_CMDS[4:]))
    def lifecycle(self, f: HsmFile, cmd: int) -> None:
        self.ioctl(f, cmd, 0)

    @rule(f=fds, cmd=st.sampled_from(UNKNOWN_IOCTLS), arg=u64)
    def unknown_ioctl(self, f: HsmFile, cmd: int, arg: int) -> None:
        self.ioctl(f, cmd, arg)

    # ------------------------------------------------------------------ struct arguments
    @rule(f=fds, cmd=st.sampled_from(_STRUCT_CMDS), data=st.binary(max_size=320), form=st.integers(0, 12))
    def random_struct(self, f: HsmFile, cmd: int, data: bytes, form: int) -> None:
        ctype = uapi.IOCTL_ARG[cmd]
        assert isinstance(ctype, type)
        self.ioctl(f, cmd, self.arg_form(cmd, data, form, _S(ctype)))

    @rule(
        f=fds,
        vcpu_id=st.integers(0, 5),
        cr0=st.sampled_from([0x30, 0x31, 0x80000031, 0, 0x20, 1 << 40]),
        cr4=st.sampled_from([0, 0x20, 0x2000, 1 << 23]),
        efer=st.sampled_from([0, 0x500, 0x100]),
        rflags=st.sampled_from([0, 2, 0x200, (1 << 64) - 1]),
        reserved=st.sampled_from([0, 0, 0, 1]),
        form=st.sampled_from([0, 0, 1, 2, 4]),
    )
    def set_vcpu_regs(
        self, f: HsmFile, vcpu_id: int, cr0: int, cr4: int, efer: int, rflags: int, reserved: int, form: int
    ) -> None:
        r = uapi.acrn_vcpu_regs()
        r.vcpu_id = vcpu_id
        r.reserved[0] = reserved
        r.vcpu_regs.cr0, r.vcpu_regs.cr4, r.vcpu_regs.ia32_efer = cr0, cr4, efer
        r.vcpu_regs.rflags = rflags
        r.vcpu_regs.cs_ar = 0xC09B
        r.vcpu_regs.cs_limit = 0xFFFFFFFF
        self.ioctl(
            f,
            uapi.ACRN_IOCTL_SET_VCPU_REGS,
            self.arg_form(uapi.ACRN_IOCTL_SET_VCPU_REGS, bytes(r), form, _S(r)),
        )

    @rule(
        f=fds,
        mtype=st.sampled_from([0, 0, 1, 2, 0xFFFFFFFF]),
        page=st.integers(0, 40),
        offset=st.integers(0, 4095),
        pages=st.sampled_from([0, 1, 2, 3, 100, (1 << 52)]),
        gpa=st.sampled_from([0, 0x1000, 0x100000, 0xFED00000, (1 << 63)]),
        attr=st.sampled_from([uapi.ACRN_MEM_ACCESS_RWX, 0, 0x7C7, 0xFFFFFFFF]),
        unset=st.booleans(),
    )
    def memseg(
        self, f: HsmFile, mtype: int, page: int, offset: int, pages: int, gpa: int, attr: int, unset: bool
    ) -> None:
        m = uapi.acrn_vm_memmap(type=mtype, attr=attr, user_vm_pa=gpa, len=(pages * 4096) & ((1 << 64) - 1))
        m.vma_base = self.pool.pick(page, offset)
        cmd = uapi.ACRN_IOCTL_UNSET_MEMSEG if unset else uapi.ACRN_IOCTL_SET_MEMSEG
        self.ioctl(f, cmd, bytearray(bytes(m)))

    @rule(f=fds, page=st.integers(0, 40), offset=st.integers(0, 4095), cmd=st.integers(0, 3), cnt=small)
    def intr_monitor(self, f: HsmFile, page: int, offset: int, cmd: int, cnt: int) -> None:
        addr = self.pool.safe_monitor(self.pool.pick(page, offset))
        if self.pool.in_scratch(addr):
            base = addr & ~0xFFF
            ctypes.memmove(base, (cmd | (cnt * 3) << 32).to_bytes(8, "little"), 8)
        self.ioctl(f, uapi.ACRN_IOCTL_VM_INTR_MONITOR, addr)

    @rule(f=fds, value=st.one_of(u64, st.tuples(st.integers(0, 60), st.integers(0, 5))))
    def set_irqline(self, f: HsmFile, value: int | tuple[int, int]) -> None:
        if isinstance(value, tuple):
            value = uapi.irqline_value(*value)
        self.ioctl(f, uapi.ACRN_IOCTL_SET_IRQLINE, value)

    @rule(
        f=fds,
        vcpu=st.sampled_from([0, 1, 2, 3, 16, 0x10000, 0xFFFFFFFF]),
        reserved=st.sampled_from([0, 0, 1]),
    )
    def notify(self, f: HsmFile, vcpu: int, reserved: int) -> None:
        n = uapi.acrn_ioreq_notify(vmid=0xFFFF, reserved=reserved, vcpu=vcpu)
        self.ioctl(f, uapi.ACRN_IOCTL_NOTIFY_REQUEST_FINISH, n)

    @rule(
        f=fds,
        vmid=st.integers(0, 20),
        vcpu=st.integers(0, 5),
        num=st.integers(0, 4),
        kind=st.integers(0, 5),
        size=st.sampled_from([8, 32, 48, 4]),
    )
    def pm_get_cpu_state(self, f: HsmFile, vmid: int, vcpu: int, num: int, kind: int, size: int) -> None:
        buf = bytearray(max(size, 1))
        buf[: min(8, size)] = uapi.pm_cmd(vmid, vcpu, num, kind).to_bytes(8, "little")[: min(8, size)]
        self.ioctl(f, uapi.ACRN_IOCTL_PM_GET_CPU_STATE, buf)

    @rule(
        f=fds,
        which=st.integers(0, 3),
        flags=st.integers(0, 15),
        addr=st.sampled_from([0x80, 0xCF8, 0xCFC, 0xFED00000, (1 << 64) - 2]),
        length=st.sampled_from([0, 1, 2, 4, 8, 3]),
        reserved=st.sampled_from([0, 0, 0, 1]),
        data=st.integers(0, 3),
    )
    def ioeventfd(
        self, f: HsmFile, which: int, flags: int, addr: int, length: int, reserved: int, data: int
    ) -> None:
        fd = self._eventfd(which)
        a = uapi.acrn_ioeventfd(fd=fd, flags=flags, addr=addr, len=length, data=data)
        a.reserved = reserved
        self.ioctl(f, uapi.ACRN_IOCTL_IOEVENTFD, a)

    @rule(f=fds, which=st.integers(0, 3), flags=st.integers(0, 3), signal=st.booleans())
    def irqfd(self, f: HsmFile, which: int, flags: int, signal: bool) -> None:
        fd = self._eventfd(which)
        if signal and fd in self.eventfds:
            os.eventfd_write(fd, 1)
        a = uapi.acrn_irqfd(fd=fd, flags=flags)
        a.msi.msi_addr, a.msi.msi_data = 0xFEE00000, 0x30
        self.ioctl(f, uapi.ACRN_IOCTL_IRQFD, a)

    def _eventfd(self, which: int) -> int:
        """An eventfd of ours (0, 1), a non-eventfd fd (2), or a closed fd number (3)."""
        if which < 2:
            while len(self.eventfds) <= which:
                self.eventfds.append(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
            return self.eventfds[which]
        if which == 2:
            return 0 if os.isatty(0) else 2  # some open fd that is not an eventfd
        return 1 << 20  # above any fd in use

    # ------------------------------------------------------------------ ioreq traffic
    @rule(f=fds)
    def attach(self, f: HsmFile) -> None:
        """ATTACH blocks until a request is pending; a 'signal' releases it (acrn_ioreq_client_wait)."""
        done = threading.Event()

        def interrupter() -> None:
            while not done.wait(0.002):
                f.interrupt_attach()

        t = threading.Thread(target=interrupter)
        t.start()
        try:
            self.ioctl(f, uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT, 0)
        finally:
            done.set()
            t.join()

    @rule(
        f=fds, vcpu=st.integers(0, 3), port=st.sampled_from([0x3F8, 0x80, 0xCF8, 0xCFC]), write=st.booleans()
    )
    def guest_io(self, f: HsmFile, vcpu: int, port: int, write: bool) -> None:
        """What a RUNNING vCPU's exit does: acrn_insert_request (and the upcall)."""
        vm = self.machine.hv.vm(f.vm.vmid) if f.vm.valid else None
        if vm is None or vm.state != 2 or vm.vcpu(vcpu) is None:
            return
        direction = uapi.ACRN_IOREQ_DIR_WRITE if write else uapi.ACRN_IOREQ_DIR_READ
        rc = self.machine.hv.insert_request(
            vm.vmid, vcpu, uapi.ACRN_IOREQ_TYPE_PORTIO, direction=direction, address=port, size=4, value=7
        )
        assert rc in (0, -errno.EINVAL)

    @rule(f=fds, vcpu=st.integers(0, 3))
    def guest_complete(self, f: HsmFile, vcpu: int) -> None:
        """The vCPU's post-work after its wait (dm_emulate_io_complete): frees a COMPLETE slot."""
        if f.vm.valid:
            self.machine.hv.complete_request(f.vm.vmid, vcpu)

    # ------------------------------------------------------------------ invariants and end
    @invariant()
    def invariants_hold(self) -> None:
        check_invariants(self.machine, self.files, self.accel)

    def teardown(self) -> None:
        try:
            for f in self.files:
                f.release()
            check_released(self.machine, self.accel)
        finally:
            for fd in self.eventfds:
                os.close(fd)
            self.pool.close()
            self.machine.runtime.close()


def _run(examples: int, steps: int) -> None:
    fds_before = open_fds()
    threads_before = threading.active_count()
    faulthandler.dump_traceback_later(
        600, exit=True, file=sys.__stderr__
    )  # a hang is a finding too: never block CI
    try:
        run_state_machine = HsmFuzz.TestCase
        run_state_machine.settings = settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )
        run_state_machine().runTest()
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert threading.active_count() <= threads_before, "fuzzing leaked threads"
    assert open_fds() <= fds_before | set(), f"fuzzing leaked fds: {open_fds() - fds_before}"


def test_fuzz_ioctl_sequences_short() -> None:
    """CI: a short random walk over the whole ioctl surface (nothing raised, errno legal, no leaks)."""
    before = dict(STATS)
    _run(int(os.environ.get("PYACRN_FUZZ_EXAMPLES", "25")), 40)
    print(
        f"fuzz: {STATS['sequences'] - before['sequences']} sequences, {STATS['ioctls'] - before['ioctls']} ioctls"
    )


@pytest.mark.slow
def test_fuzz_ioctl_sequences_long(capsys: pytest.CaptureFixture[str]) -> None:
    """On demand: thousands of sequences; prints how many sequences and ioctls ran."""
    before = dict(STATS)
    n = int(os.environ.get("PYACRN_FUZZ_LONG_EXAMPLES", "2000"))
    _run(n, 60)
    with capsys.disabled():
        print(
            f"\nfuzz: {STATS['sequences'] - before['sequences']} sequences, "
            f"{STATS['ioctls'] - before['ioctls']} ioctls, {STATS['errors'] - before['errors']} refused"
        )
        print(
            "succeeded:",
            ", ".join(f"{k.removeprefix('ACRN_IOCTL_')} {v}" for k, v in sorted(SUCCEEDED.items())),
        )
