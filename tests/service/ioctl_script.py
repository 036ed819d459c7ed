"""Scripts of HSM ioctls for ``clients/ioctl_table.c``, and the same scripts run in-process.

A :class:`Script` is written once in Python; ``ioctl_table`` runs it in a C process through
``acrn exec`` (the preload library and the service), :func:`run_inprocess` runs it on an
:class:`~acrn.emu.hsm.HsmFile` of a fresh :class:`~acrn.emu.machine.Machine` in this process,
and both print one line per ioctl: ``LABEL RET ERRNO HEX``.  Equal output proves the two
transports equal for every case, including the bytes the driver writes back.

:func:`table` is the case list, taken from the emulated HSM's own tests
(``tests/emu/test_hsm_*.py``) and ``docs/ioctls.md``; its ``expect`` entries are the named
cases, checked by hand on top of the comparison.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
from dataclasses import dataclass, field

from acrn import uapi
from acrn.emu.machine import Machine
from acrn.emu.platform import Platform
from acrn.service.client_mappings import _libc, map_anon, unmap

PAGE = mmap.PAGESIZE
_PROT = {"rw": mmap.PROT_READ | mmap.PROT_WRITE, "ro": mmap.PROT_READ, "none": 0}


def _cmd_name(cmd: int) -> str:
    name = uapi.IOCTL_NAMES.get(cmd)
    return name.removeprefix("ACRN_IOCTL_") if name else hex(cmd)


@dataclass
class Script:
    lines: list[str] = field(default_factory=list)
    #: label -> (return value, errno name) the case must give (the hand-written named cases).
    expect: dict[str, tuple[int, str]] = field(default_factory=dict)
    _n: int = 0

    def step(self, *toks: object) -> None:
        self.lines.append(" ".join(str(t) for t in toks))

    def open(self) -> None:
        self.step("open")

    def close(self) -> None:
        self.step("close")

    def mem(self, name: str, pages: int = 1, prot: str = "rw") -> str:
        self.step("mem", name, pages)
        if prot != "rw":
            self.step("protect", name, prot)
        return name

    def put(self, ref: str, data: bytes) -> None:
        self.step("put", ref, 0, data.hex())

    def ioctl(self, label: str, cmd: int | str, arg: int | str = 0, *, out: int = 0,
              expect: tuple[int, str] | str | None = None) -> None:  # fmt: skip
        """``arg``: a value (int) or a reference ``REGION+OFF`` (str)."""
        assert label not in self.expect and " " not in label
        self._n += 1
        label = f"{self._n:03d}.{label}"
        c = cmd if isinstance(cmd, str) else _cmd_name(cmd)
        a = f"v:{arg:#x}" if isinstance(arg, int) else arg
        self.step("ioctl", label, c, a, out)
        if expect is not None:
            self.expect[label] = (-1, expect) if isinstance(expect, str) else expect

    def call(self, label: str, cmd: int, obj: ctypes.Structure | bytes, *, out: int = 0,
             expect: tuple[int, str] | str | None = None, at: str = "arg",
             addrs: dict[int, str] | None = None, fds: dict[int, str] | None = None) -> None:  # fmt: skip
        """Put ``obj`` at region ``at``, patch addresses/fd numbers at byte offsets, then the ioctl."""
        self.put(at, bytes(obj))
        for off, ref in (addrs or {}).items():
            self.step("addr", at, off, ref)
        for off, fd in (fds or {}).items():
            self.step("fdnum", at, off, fd)
        self.ioctl(label, cmd, at, out=out, expect=expect)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# -------------------------------------------------------------------------------- in-process
def run_inprocess(text: str, accel: str) -> list[str]:
    """Run a script on a fresh in-process Machine; the lines ``ioctl_table`` would print."""
    machine = Machine(Platform.default(), accel)
    regions: dict[str, tuple[int, int]] = {}
    fds: dict[str, int] = {}
    owned: list[int] = []
    files = []
    cur = None
    out: list[str] = []

    def ref(s: str) -> int:
        name, _, off = s.partition("+")
        return regions[name][0] + (int(off, 0) if off else 0)

    try:
        for line in text.splitlines():
            tok = line.split()
            if not tok or tok[0].startswith("#"):
                continue
            op = tok[0]
            if op == "open":
                cur = machine.open()
                files.append(cur)
            elif op == "close":
                assert cur is not None
                cur.release()
                cur = None
            elif op == "mem":
                n = int(tok[2], 0) * PAGE
                regions[tok[1]] = (map_anon(n, _PROT["rw"]), n)
            elif op == "protect":
                base, n = regions[tok[1].partition("+")[0]]
                at = ref(tok[1])
                _libc.mprotect(at, base + n - at, _PROT[tok[2]])
            elif op == "put":
                data = bytes.fromhex(tok[3])
                ctypes.memmove(ref(tok[1]) + int(tok[2], 0), data, len(data))
            elif op == "addr":
                ctypes.memmove(ref(tok[1]) + int(tok[2], 0), ref(tok[3]).to_bytes(8, "little"), 8)
            elif op == "fdnum":
                ctypes.memmove(
                    ref(tok[1]) + int(tok[2], 0), fds[tok[3]].to_bytes(4, "little", signed=True), 4
                )
            elif op == "eventfd":
                fds[tok[1]] = os.eventfd(0, os.EFD_CLOEXEC)
                owned.append(fds[tok[1]])
            elif op == "pipe":
                r, w = os.pipe()
                owned += [r, w]
                fds[tok[1]] = r
            elif op == "badfd":
                n = 900
                while True:
                    try:
                        fcntl.fcntl(n, fcntl.F_GETFD)
                    except OSError:
                        break
                    n += 1
                fds[tok[1]] = n
            elif op == "ioctl":
                label, c, a, nout = tok[1], tok[2], tok[3], int(tok[4], 0)
                cmd = uapi.IOCTLS.get(f"ACRN_IOCTL_{c}")
                cmd = int(c, 0) if cmd is None else cmd
                is_ptr = not a.startswith("v:")
                arg = ref(a) if is_ptr else int(a[2:], 0)
                assert cur is not None
                try:
                    ret, err = cur.ioctl(cmd, arg), "0"
                except OSError as e:
                    ret, err = -1, errno.errorcode.get(e.errno or 0, str(e.errno))
                shown = ctypes.string_at(arg, nout).hex() if is_ptr and nout else "-"
                out.append(f"{label} {ret} {err} {shown}")
            else:
                raise ValueError(f"unknown step {line!r}")
    finally:
        for f in files:
            f.release()
        machine.runtime.close()
        for fd in owned:
            os.close(fd)
        for base, n in regions.values():
            unmap(base, n)
    return out


# -------------------------------------------------------------------------------- the cases
#: Real mode at 0: `hlt; jmp $-1` (the guest of the START/PAUSE/RESET cases).
HLT_GUEST = bytes([0xF4, 0xEB, 0xFD])
U64 = 8


def creation(name: bytes, **kw: int) -> uapi.acrn_vm_creation:
    c = uapi.acrn_vm_creation(**kw)
    ctypes.memmove(ctypes.addressof(c) + uapi.acrn_vm_creation.uuid.offset, name, len(name))
    return c


def real_mode_regs(**kw: int) -> uapi.acrn_vcpu_regs:
    r = uapi.acrn_vcpu_regs()
    r.vcpu_regs.cr0 = 0x30  # ET | NE
    r.vcpu_regs.cs_ar = 0x9F
    r.vcpu_regs.cs_sel = 0xF000
    r.vcpu_regs.cs_limit = 0xFFFF
    for k, v in kw.items():
        if k == "vcpu_id":
            r.vcpu_id = v
        else:
            setattr(r.vcpu_regs, k, v)
    return r


_IOREQ_BUF = uapi.acrn_vm_creation.ioreq_buf.offset
_VMA_BASE = uapi.acrn_vm_memmap.vma_base.offset
_CREATE_OUT = 8  # vmid, reserved0, vcpu_num, reserved1 (the rest echoes the caller's addresses)


def table() -> Script:
    """Every one of the 27 ioctls with its errno cases, in the emulated HSM's check order."""
    s = Script()
    s.mem("arg", 2)  # the argument of most calls (2 pages: room for the largest struct)
    s.mem("page")  # an ioreq page
    s.mem("page2")
    s.mem("ro", 1, "ro")
    s.mem("none", 1, "none")
    s.mem("edge", 2)  # an argument that ends where its page ends: the next page is PROT_NONE
    s.mem("ram", 16)
    s.put("ram", HLT_GUEST)
    s.step("eventfd", "efd")
    s.step("eventfd", "efd2")
    s.step("pipe", "pipe")
    s.step("badfd", "closed")

    # ---- a fresh fd: every ioctl but CREATE_VM, unknown ones too, is EINVAL (acrn_dev_ioctl)
    s.open()
    for name, cmd in uapi.IOCTLS.items():
        if cmd != uapi.ACRN_IOCTL_CREATE_VM:
            s.ioctl(f"fresh.{name.removeprefix('ACRN_IOCTL_')}", cmd, "arg", expect="EINVAL")
    s.ioctl("fresh.unknown", 0xA299, 0, expect="EINVAL")
    s.ioctl("fresh.other_type", 0xAE01, 0, expect="EINVAL")  # any type reaches acrn_dev_ioctl
    s.close()

    # ---- CREATE_VM refusals
    s.open()
    s.call("create.reserved0", uapi.ACRN_IOCTL_CREATE_VM, creation(b"t-res0", reserved0=1),
           addrs={_IOREQ_BUF: "page"}, expect="EINVAL")  # fmt: skip
    s.call("create.reserved1", uapi.ACRN_IOCTL_CREATE_VM, creation(b"t-res1", reserved1=1),
           addrs={_IOREQ_BUF: "page"}, expect="EINVAL")  # fmt: skip
    s.ioctl("create.null_arg", uapi.ACRN_IOCTL_CREATE_VM, 0, expect="EFAULT")
    s.ioctl("create.unmapped_arg", uapi.ACRN_IOCTL_CREATE_VM, "none", expect="EFAULT")
    s.call("create.ioreq_unmapped", uapi.ACRN_IOCTL_CREATE_VM, creation(b"t-unm"),
           addrs={_IOREQ_BUF: "none"}, expect="EINVAL")  # fmt: skip
    s.call("create.ioreq_readonly", uapi.ACRN_IOCTL_CREATE_VM, creation(b"t-ro"),
           addrs={_IOREQ_BUF: "ro"}, expect="EINVAL")  # fmt: skip
    s.ioctl("create.failed_leaves_no_vm", uapi.ACRN_IOCTL_DESTROY_VM, 0, expect="EINVAL")
    # (the fd stays open: its VMs whose ioreq page could not be pinned are orphans in the
    # hypervisor until the release, which makes the vmids below depend on its timing without
    # the service's settle_releases; the reuse cases test that)

    # ---- close() releases the file before it returns (the name, vmid and slot are free at once)
    # (a running VM: its release, which pauses and destroys it, takes a while)
    ram = dict(type=uapi.ACRN_MEMMAP_RAM, attr=uapi.ACRN_MEM_ACCESS_RWX, user_vm_pa=0, len=16 * PAGE)
    for i in range(10):
        s.open()
        s.call(f"reuse{i}.create", uapi.ACRN_IOCTL_CREATE_VM, creation(b"t-reuse"), addrs={_IOREQ_BUF: "page"},
               out=_CREATE_OUT, expect=(0, "0"))  # fmt: skip
        s.call(f"reuse{i}.memseg", uapi.ACRN_IOCTL_SET_MEMSEG, uapi.acrn_vm_memmap(**ram), addrs={_VMA_BASE: "ram"},
               expect=(0, "0"))  # fmt: skip
        s.call(f"reuse{i}.regs", uapi.ACRN_IOCTL_SET_VCPU_REGS, real_mode_regs(), expect=(0, "0"))
        s.ioctl(f"reuse{i}.start", uapi.ACRN_IOCTL_START_VM, 0, expect=(0, "0"))
        s.close()

    # ---- a CREATE_VM whose write-back faults: the VM exists (and stays with the fd)
    s.open()
    s.step("mem", "roarg", 1)
    s.put("roarg", bytes(creation(b"t-wbfault")))
    s.step("addr", "roarg", _IOREQ_BUF, "page2")
    s.step("protect", "roarg", "ro")
    s.ioctl(
        "create.readonly_arg_is_efault", uapi.ACRN_IOCTL_CREATE_VM, "roarg", out=_CREATE_OUT, expect="EFAULT"
    )
    s.ioctl("create.readonly_arg_vm_exists", 0xA299, 0, expect="ENOTTY")

    # ---- a second VM: unknown commands once a VM exists
    s.open()
    s.call("create", uapi.ACRN_IOCTL_CREATE_VM, creation(b"t-main"), addrs={_IOREQ_BUF: "page+0x123"},
           out=_CREATE_OUT, expect=(0, "0"))  # a misaligned ioreq_buf: the page base is used  # fmt: skip
    s.ioctl("unknown_cmd", 0xA299, 0, expect="ENOTTY")
    s.ioctl("unknown_cmd_struct", 0xC010A2F0, "arg", expect="ENOTTY")
    s.ioctl("unknown_cmd_other_type", 0x5411, "arg", expect="ENOTTY")  # TIOCOUTQ: not the socket's answer

    # ---- the VM of all other cases
    s.open()
    s.call("create3", uapi.ACRN_IOCTL_CREATE_VM, creation(b"t-vm3"), addrs={_IOREQ_BUF: "page2"},
           out=_CREATE_OUT, expect=(0, "0"))  # fmt: skip

    # SET_VCPU_REGS: reserved fields in the driver's order, before the hypervisor's checks
    regs = uapi.ACRN_IOCTL_SET_VCPU_REGS
    r = real_mode_regs()
    r.reserved[0] = 1
    s.call("regs.reserved", regs, r, expect="EINVAL")
    r = real_mode_regs()
    r.vcpu_regs.reserved_32[2] = 1
    s.call("regs.reserved_32", regs, r, expect="EINVAL")
    r = real_mode_regs()
    r.vcpu_regs.reserved_64[3] = 1
    s.call("regs.reserved_64", regs, r, expect="EINVAL")
    r = real_mode_regs()
    r.vcpu_regs.gdt.reserved[1] = 1
    s.call("regs.gdt_reserved", regs, r, expect="EINVAL")
    r = real_mode_regs()
    r.vcpu_regs.idt.reserved[2] = 1
    s.call("regs.idt_reserved", regs, r, expect="EINVAL")
    r = real_mode_regs(cr0=0x10)
    r.reserved[0] = 1
    s.call("regs.reserved_before_cr0", regs, r, expect="EINVAL")
    s.call("regs.cr0_without_ne", regs, real_mode_regs(cr0=0x10), expect="EPERM")
    s.call("regs.vcpu_id_out_of_range", regs, real_mode_regs(vcpu_id=64), expect="EPERM")
    s.put("edge+4088", bytes(8))
    s.step("protect", "edge+4096", "none")
    s.ioctl("regs.short_argument", regs, "edge+4088", expect="EFAULT")
    s.ioctl("regs.null", regs, 0, expect="EFAULT")
    s.call("regs.ok", regs, real_mode_regs(), expect=(0, "0"))

    # ioreq client
    notify = uapi.ACRN_IOCTL_NOTIFY_REQUEST_FINISH
    s.call("notify.no_client", notify, uapi.acrn_ioreq_notify(0, 0, 0), expect=(0, "0"))
    s.call("notify.reserved", notify, uapi.acrn_ioreq_notify(0, 1, 0), expect="EINVAL")
    s.ioctl("attach.no_client", uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT, 0, expect="ENODEV")
    s.ioctl("client.create", uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0, expect=(0, "0"))
    s.ioctl("client.create_twice", uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0, expect="EEXIST")
    s.call("notify.vcpu_beyond_vcpu_num", notify, uapi.acrn_ioreq_notify(0, 0, 63), expect="EINVAL")
    s.call("notify.vcpu_truncated_to_u16", notify, uapi.acrn_ioreq_notify(0, 0, 0x10000), expect=(0, "0"))
    s.call("notify.vmid_ignored", notify, uapi.acrn_ioreq_notify(77, 0, 0), expect=(0, "0"))
    s.ioctl("clear_vm_ioreq", uapi.ACRN_IOCTL_CLEAR_VM_IOREQ, 0, expect=(0, "0"))
    s.ioctl("client.destroy", uapi.ACRN_IOCTL_DESTROY_IOREQ_CLIENT, 0, expect=(0, "0"))
    s.ioctl("attach.after_destroy", uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT, 0, expect="ENODEV")
    s.ioctl("client.destroy_again", uapi.ACRN_IOCTL_DESTROY_IOREQ_CLIENT, 0, expect=(0, "0"))
    s.ioctl("client.create_again", uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT, 0, expect=(0, "0"))

    # memory
    memseg, unset = uapi.ACRN_IOCTL_SET_MEMSEG, uapi.ACRN_IOCTL_UNSET_MEMSEG
    ram = dict(type=uapi.ACRN_MEMMAP_RAM, attr=uapi.ACRN_MEM_ACCESS_RWX, user_vm_pa=0, len=16 * PAGE)
    s.call("memseg.bad_type", memseg, uapi.acrn_vm_memmap(type=2, len=PAGE), expect="EINVAL")
    s.call("memseg.len_below_a_page", memseg, uapi.acrn_vm_memmap(**{**ram, "len": 0xFFF}),
           addrs={_VMA_BASE: "ram"}, expect="EINVAL")  # fmt: skip
    s.call("memseg.vma_unmapped", memseg, uapi.acrn_vm_memmap(**{**ram, "len": PAGE}),
           addrs={_VMA_BASE: "none"}, expect="EFAULT")  # fmt: skip
    s.call("memseg.vma_readonly", memseg, uapi.acrn_vm_memmap(**{**ram, "len": PAGE}),
           addrs={_VMA_BASE: "ro"}, expect="EFAULT")  # fmt: skip
    s.call("memseg.ram", memseg, uapi.acrn_vm_memmap(**ram), addrs={_VMA_BASE: "ram"}, expect=(0, "0"))
    mmio = uapi.acrn_vm_memmap(type=uapi.ACRN_MEMMAP_MMIO, attr=uapi.ACRN_MEM_ACCESS_RWX,
                               user_vm_pa=0xD000_0000, len=PAGE)  # fmt: skip
    mmio.service_vm_pa = 0xFED0_0000
    # MMIO: service_vm_pa is a Service VM physical address, which the emulator models as an
    # address of its own process, i.e. of the service; no client address is one, so a
    # successful MMIO memseg cannot be compared here (tests/emu/test_hsm_memseg.py has them).
    s.call("memseg.mmio_invalid_service_pa", memseg, mmio, expect="EINVAL")
    mmio.len = 100
    s.call("memseg.mmio_len_not_page_multiple", memseg, mmio, expect="EINVAL")
    s.call("unset_memseg.ram_is_einval", unset, uapi.acrn_vm_memmap(**ram), addrs={_VMA_BASE: "ram"},
           expect="EINVAL")  # fmt: skip
    mmio.len = PAGE
    s.call("unset_memseg.mmio_not_mapped", unset, mmio, expect="EINVAL")

    # interrupts
    msi = uapi.ACRN_IOCTL_INJECT_MSI
    s.call("msi.bad_address", msi, uapi.acrn_msi_entry(0x1000, 0x30), expect="EPERM")
    s.call("msi.ok", msi, uapi.acrn_msi_entry(0xFEE0_0000, 0x30), expect=(0, "0"))
    s.ioctl("msi.null", msi, 0, expect="EFAULT")
    irqline = uapi.ACRN_IOCTL_SET_IRQLINE
    s.ioctl("irqline.ok", irqline, uapi.GSI_RAISING_PULSE << 32 | 4, expect=(0, "0"))
    s.ioctl("irqline.bad_gsi", irqline, uapi.GSI_SET_HIGH << 32 | 200, expect="EPERM")
    s.ioctl("irqline.unknown_op", irqline, 9 << 32 | 4, expect=(0, "0"))
    mon = uapi.ACRN_IOCTL_VM_INTR_MONITOR
    s.ioctl("monitor.ok", mon, "page2+0x10", expect=(0, "0"))
    s.ioctl("monitor.unmapped", mon, "none", expect="EFAULT")
    s.ioctl("monitor.readonly", mon, "ro", expect="EFAULT")
    s.ioctl("monitor.null", mon, 0, expect="EFAULT")

    # PM_GET_CPU_STATE: the command word in, 8 or 32 bytes back (48 for P-states)
    pm = uapi.ACRN_IOCTL_PM_GET_CPU_STATE
    vmid = 5  # create3's vmid on a fresh machine (after the orphans 1-2, t-wbfault 3, t-main 4)
    s.call("pm.cx_cnt", pm, uapi.pm_cmd(vmid, 0, 0, uapi.ACRN_PMCMD_GET_CX_CNT).to_bytes(8, "little"),
           out=8, expect=(0, "0"))  # fmt: skip
    s.call("pm.cx_data", pm, uapi.pm_cmd(vmid, 0, 1, uapi.ACRN_PMCMD_GET_CX_DATA).to_bytes(8, "little")
           + bytes(24), out=32, expect=(0, "0"))  # fmt: skip
    s.call("pm.px_data", pm, uapi.pm_cmd(vmid, 0, 0, uapi.ACRN_PMCMD_GET_PX_DATA).to_bytes(8, "little")
           + bytes(40), out=48, expect="EPERM")  # fmt: skip
    s.call("pm.unknown_type", pm, (uapi.pm_cmd(vmid, 0, 0, 0x7F)).to_bytes(8, "little") + b"\xaa" * 8,
           out=16, expect=(0, "0"))  # fmt: skip
    s.put("edge+4088", uapi.pm_cmd(vmid, 0, 1, uapi.ACRN_PMCMD_GET_CX_DATA).to_bytes(8, "little"))
    s.ioctl("pm.cx_data_into_8_bytes", pm, "edge+4088", out=8, expect="EFAULT")
    s.put("edge+4088", uapi.pm_cmd(vmid, 0, 0, uapi.ACRN_PMCMD_GET_CX_CNT).to_bytes(8, "little"))
    s.ioctl("pm.cx_cnt_into_8_bytes", pm, "edge+4088", out=8, expect=(0, "0"))
    s.ioctl("pm.null", pm, 0, expect="EFAULT")

    # passthrough and virtual devices (recorded by the emulated hypervisor)
    pcidev = uapi.acrn_pcidev(type=0, virt_bdf=0x0030, phys_bdf=0x00A0, intr_line=5, intr_pin=1)
    s.call("pcidev.unknown_phys", uapi.ACRN_IOCTL_ASSIGN_PCIDEV,
           uapi.acrn_pcidev(virt_bdf=0x0030, phys_bdf=0x0F00), expect="ENODEV")  # fmt: skip
    s.call("pcidev.assign", uapi.ACRN_IOCTL_ASSIGN_PCIDEV, pcidev, expect=(0, "0"))
    ptirq = uapi.acrn_ptdev_irq(type=uapi.ACRN_PTDEV_IRQ_INTX, virt_bdf=0x0030, phys_bdf=0x00A0)
    ptirq.intx.virt_pin = 5
    ptirq.intx.phys_pin = 5
    s.call("ptdev_intr.set", uapi.ACRN_IOCTL_SET_PTDEV_INTR, ptirq)
    s.call("ptdev_intr.reset", uapi.ACRN_IOCTL_RESET_PTDEV_INTR, ptirq)
    bad = uapi.acrn_ptdev_irq(type=uapi.ACRN_PTDEV_IRQ_MSI, virt_bdf=0x0030, phys_bdf=0x00A0)
    s.call("ptdev_intr.msi_is_eperm", uapi.ACRN_IOCTL_SET_PTDEV_INTR, bad, expect="EPERM")
    s.call("pcidev.deassign", uapi.ACRN_IOCTL_DEASSIGN_PCIDEV, pcidev, expect=(0, "0"))
    s.call("pcidev.deassign_again", uapi.ACRN_IOCTL_DEASSIGN_PCIDEV, pcidev, expect="ENODEV")
    mdev = uapi.acrn_mmiodev()
    mdev.res[0].user_vm_pa = 0xE000_0000
    mdev.res[0].service_vm_pa = 0xE000_0000
    mdev.res[0].size = PAGE
    s.call("mmiodev.assign", uapi.ACRN_IOCTL_ASSIGN_MMIODEV, mdev, expect=(0, "0"))
    s.call("mmiodev.deassign", uapi.ACRN_IOCTL_DEASSIGN_MMIODEV, mdev, expect=(0, "0"))
    s.call("mmiodev.deassign_again", uapi.ACRN_IOCTL_DEASSIGN_MMIODEV, mdev, expect="EINVAL")
    mdev.res[0].size = 0x123
    s.call("mmiodev.unaligned", uapi.ACRN_IOCTL_ASSIGN_MMIODEV, mdev, expect="EINVAL")
    s.call("vdev.create_unknown_id", uapi.ACRN_IOCTL_CREATE_VDEV, uapi.acrn_vdev(), expect="EINVAL")
    s.call("vdev.destroy_unknown_id", uapi.ACRN_IOCTL_DESTROY_VDEV, uapi.acrn_vdev())
    s.ioctl("vdev.null", uapi.ACRN_IOCTL_CREATE_VDEV, 0, expect="EFAULT")

    # eventfds: the fd in the argument travels with the call
    ioe, irqfd = uapi.ACRN_IOCTL_IOEVENTFD, uapi.ACRN_IOCTL_IRQFD
    pio = uapi.ACRN_IOEVENTFD_FLAG_PIO
    s.call("ioeventfd.closed_fd", ioe, uapi.acrn_ioeventfd(flags=pio, addr=0x600, len=4), fds={0: "closed"},
           expect="EBADF")  # fmt: skip
    s.call("ioeventfd.not_an_eventfd", ioe, uapi.acrn_ioeventfd(flags=pio, addr=0x600, len=4),
           fds={0: "pipe"}, expect="EINVAL")  # fmt: skip
    s.call("ioeventfd.reserved", ioe, uapi.acrn_ioeventfd(flags=pio, addr=0x600, len=4, reserved=1),
           fds={0: "efd"}, expect="EINVAL")  # fmt: skip
    s.call("ioeventfd.bad_len", ioe, uapi.acrn_ioeventfd(flags=pio, addr=0x600, len=3), fds={0: "efd"},
           expect="EINVAL")  # fmt: skip
    s.call("ioeventfd.assign", ioe, uapi.acrn_ioeventfd(flags=pio, addr=0x600, len=4), fds={0: "efd"},
           expect=(0, "0"))  # fmt: skip
    s.call("ioeventfd.conflict", ioe, uapi.acrn_ioeventfd(flags=pio, addr=0x600, len=4), fds={0: "efd"},
           expect="EEXIST")  # fmt: skip
    s.call("ioeventfd.other_eventfd_same_range", ioe, uapi.acrn_ioeventfd(flags=pio, addr=0x600, len=4),
           fds={0: "efd2"}, expect=(0, "0"))  # fmt: skip
    s.call("ioeventfd.deassign", ioe,
           uapi.acrn_ioeventfd(flags=pio | uapi.ACRN_IOEVENTFD_FLAG_DEASSIGN, addr=0x600, len=4),
           fds={0: "efd"}, expect=(0, "0"))  # fmt: skip
    s.call("ioeventfd.deassign_closed_fd", ioe,
           uapi.acrn_ioeventfd(flags=pio | uapi.ACRN_IOEVENTFD_FLAG_DEASSIGN, addr=0x600, len=4),
           fds={0: "closed"}, expect="EBADF")  # fmt: skip
    irq = uapi.acrn_irqfd()
    irq.msi.msi_addr = 0xFEE0_0000
    irq.msi.msi_data = 0x31
    s.call("irqfd.closed_fd", irqfd, irq, fds={0: "closed"}, expect="EBADF")
    s.call("irqfd.not_an_eventfd", irqfd, irq, fds={0: "pipe"}, expect="EINVAL")
    s.call("irqfd.assign", irqfd, irq, fds={0: "efd2"}, expect=(0, "0"))
    s.call("irqfd.same_eventfd_twice", irqfd, irq, fds={0: "efd2"}, expect="EBUSY")
    irq.flags = uapi.ACRN_IRQFD_FLAG_DEASSIGN
    s.call("irqfd.deassign", irqfd, irq, fds={0: "efd2"}, expect=(0, "0"))
    s.call("irqfd.deassign_unknown", irqfd, irq, fds={0: "efd"}, expect=(0, "0"))

    # the state machine: CREATED -> RUNNING -> PAUSED -> (RESET) -> RUNNING -> PAUSED -> gone
    s.ioctl("reset.created_is_eperm", uapi.ACRN_IOCTL_RESET_VM, 0, expect="EPERM")
    s.ioctl("destroy.created_is_eperm", uapi.ACRN_IOCTL_DESTROY_VM, 0, expect="EPERM")
    s.ioctl("start", uapi.ACRN_IOCTL_START_VM, 0, expect=(0, "0"))
    s.ioctl("start.running_is_eperm", uapi.ACRN_IOCTL_START_VM, 0, expect="EPERM")
    s.call("regs.running_is_eperm", regs, real_mode_regs(), expect="EPERM")
    s.ioctl("destroy.running_is_eperm", uapi.ACRN_IOCTL_DESTROY_VM, 0, expect="EPERM")
    s.ioctl("pause", uapi.ACRN_IOCTL_PAUSE_VM, 0, expect=(0, "0"))
    s.ioctl("reset", uapi.ACRN_IOCTL_RESET_VM, 0, expect=(0, "0"))
    s.call("regs.after_reset", regs, real_mode_regs(), expect=(0, "0"))
    s.ioctl("start.after_reset", uapi.ACRN_IOCTL_START_VM, 0, expect=(0, "0"))
    s.ioctl("pause.again", uapi.ACRN_IOCTL_PAUSE_VM, 0, expect=(0, "0"))
    s.ioctl("pause.paused", uapi.ACRN_IOCTL_PAUSE_VM, 0)
    s.ioctl("destroy", uapi.ACRN_IOCTL_DESTROY_VM, 0, expect=(0, "0"))
    for name, cmd in uapi.IOCTLS.items():
        if cmd != uapi.ACRN_IOCTL_CREATE_VM:
            s.ioctl(f"destroyed.{name.removeprefix('ACRN_IOCTL_')}", cmd, "arg", expect="EINVAL")
    s.call("create.after_destroy", uapi.ACRN_IOCTL_CREATE_VM, creation(b"t-vm4"), addrs={_IOREQ_BUF: "page2"},
           out=_CREATE_OUT, expect=(0, "0"))  # fmt: skip
    # A name another fd holds: EINVAL.  (The failed create also clears the holder's slot name in
    # the hypervisor, as ACRN's hcall_create_vm does: these go last.)
    s.open()
    s.call("create.name_in_use", uapi.ACRN_IOCTL_CREATE_VM, creation(b"t-main"), addrs={_IOREQ_BUF: "page"},
           expect="EINVAL")  # fmt: skip
    s.call("create.name_in_use_by_vm_with_fault", uapi.ACRN_IOCTL_CREATE_VM, creation(b"t-wbfault"),
           addrs={_IOREQ_BUF: "page"}, expect="EINVAL")  # fmt: skip
    return s
