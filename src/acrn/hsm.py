"""The HSM client: a typed Python API over one ``/dev/acrn_hsm`` file descriptor.

As in the kernel, one :class:`Hsm` (one fd) holds at most one VM.  :meth:`Hsm.create_vm` returns
the :class:`Vm`, whose methods are one per ioctl of ``linux/acrn.h``.  Every call goes through the
device's ``ioctl(cmd, arg)`` with the exact argument bytes, so the same code drives the real HSM
and the emulator.  Failures raise :class:`acrn.HsmError` with the errno and the ioctl name; where
pyacrn can tell why (the register validator, the platform's limits, the VM state machine) the
error's detail says so in one line.  Arguments that cannot be encoded (a negative GPA, a register
state that is not a :class:`~acrn.regs.VcpuRegs`) raise ValueError/TypeError naming the argument,
before any ioctl.

Example (emulated when /dev/acrn_hsm is absent)::

    from acrn.hsm import Hsm
    from acrn.regs import VcpuRegs

    with Hsm.open() as hsm:
        vm = hsm.create_vm("demo")
        ram = vm.map_ram(0, 2 << 20)           # 2 MiB of guest RAM at GPA 0
        ram.write(0x1000, b"\\xf4")            # hlt
        vm.set_vcpu_regs(VcpuRegs(cr0=0x30, rip=0x1000, cs_ar=0x9B, cs_limit=0xFFFF))
        vm.pause(); vm.destroy()
"""

from __future__ import annotations

import ctypes
import errno
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from acrn import uapi
from acrn.errors import HsmError
from acrn.regs.model import VcpuRegs
from acrn.user_memory import HostMemory, IoreqPage

if TYPE_CHECKING:
    from acrn.arch import CpuState
    from acrn.device import Device

log = logging.getLogger(__name__)


def _name_bytes(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else bytes(name)
    if len(raw) >= uapi.MAX_VM_NAME_LEN:
        raise ValueError(
            f"VM name {name!r} is {len(raw)} bytes; ACRN allows at most {uapi.MAX_VM_NAME_LEN - 1}"
        )
    return raw.ljust(16, b"\0")


U64_MAX = (1 << 64) - 1


def _check_range(what: str, gpa: int, length: int) -> None:
    """A guest-physical range that fits the u64 fields of ``acrn_vm_memmap`` (no silent wrap)."""
    for name, value in ((what, gpa), ("length", length)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if gpa < 0 or gpa > U64_MAX:
        raise ValueError(f"{what} {gpa:#x} is not a 64-bit guest-physical address")
    if length <= 0:
        raise ValueError(f"length {length:#x} must be positive")
    if gpa + length - 1 > U64_MAX:
        raise ValueError(f"{what} {gpa:#x} + length {length:#x} runs past the 64-bit address space")


def _with_detail(e: HsmError, why: str) -> HsmError:
    """The same errno and ioctl, with pyacrn's explanation added."""
    detail = f"{e.detail}; {why}" if e.detail else why
    return HsmError(e.errno or errno.EIO, e.operation, detail)


@dataclass(frozen=True)
class MemSeg:
    """One SET_MEMSEG mapping made through this client."""

    type: int
    user_vm_pa: int
    host_address: int
    length: int
    attr: int


class Hsm:
    """One HSM file descriptor; at most one VM lives on it (drivers/virt/acrn/hsm.c: acrn_dev_open)."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.vm: Vm | None = None

    @classmethod
    def open(cls, kind: str = "auto", **kwargs: Any) -> Hsm:
        """Open ``/dev/acrn_hsm`` (``kind="kernel"``), the emulator (``"emulated"``) or whichever exists."""
        from acrn.device import open_device

        return cls(open_device(kind, **kwargs))

    @property
    def _machine(self) -> Any:
        """The emulated machine behind this fd (None for the real HSM)."""
        return getattr(self.device, "machine", None)

    @property
    def kind(self) -> str:
        return str(self.device.kind)

    def ioctl(self, cmd: int, arg: Any = 0) -> int:
        """Issue a raw ioctl; OSError becomes HsmError naming the ioctl."""
        try:
            return int(self.device.ioctl(cmd, arg))
        except HsmError:
            raise
        except OSError as e:
            name = uapi.IOCTL_NAMES.get(cmd, f"ioctl {cmd:#x}")
            raise HsmError(e.errno or errno.EIO, name) from None

    def create_vm(
        self,
        name: str | bytes = "",
        *,
        vm_flag: int = 0,
        cpu_affinity: int = 0,
        ioreq_page: IoreqPage | None = None,
    ) -> Vm:
        """ACRN_IOCTL_CREATE_VM: the VM named ``name`` (a config slot, or a free dynamic slot).

        ``ioreq_page`` is the 4 KiB request page shared with the hypervisor; one is allocated when
        not given.  ``cpu_affinity`` 0 means all the pCPUs the VM's configuration allows.
        """
        if self.vm is not None:
            # The kernel does not refuse it up front (drivers/virt/acrn/hsm.c: acrn_dev_ioctl):
            # a second VM on a live one orphans both, and after DESTROY_VM the fd keeps its
            # DESTROYED flag, so a VM created on it could never be destroyed through it
            # (drivers/virt/acrn/vm.c: acrn_vm_destroy).  acrn-dm closes the fd after DESTROY.
            had = "held" if self.vm.destroyed else "holds"
            raise HsmError(
                errno.EBUSY,
                "ACRN_IOCTL_CREATE_VM",
                f"this Hsm {had} VM {self.vm.vmid} ({self.vm.name!r}); one fd serves one VM for its "
                "lifetime: open another Hsm",
            )
        if not isinstance(cpu_affinity, int) or cpu_affinity < 0 or cpu_affinity > U64_MAX:
            raise ValueError(f"cpu_affinity {cpu_affinity!r} must be a 64-bit pCPU bitmap")
        page = ioreq_page or IoreqPage()
        own_page = ioreq_page is None
        req = uapi.acrn_vm_creation()
        ctypes.memmove(req.uuid.b, _name_bytes(name), 16)
        req.vm_flag = vm_flag
        req.cpu_affinity = cpu_affinity
        req.ioreq_buf = page.address
        try:
            self.ioctl(uapi.ACRN_IOCTL_CREATE_VM, req)
        except HsmError as e:
            if own_page:
                page.close()
            if e.errno == errno.EINVAL:
                raise _with_detail(e, self._create_vm_hint(name, cpu_affinity)) from None
            raise
        except BaseException:
            if own_page:
                page.close()
            raise
        vm = Vm(
            self, req.vmid, req.vcpu_num, name if isinstance(name, str) else name.decode(), page, own_page
        )
        self.vm = vm
        return vm

    def close(self) -> None:
        """Close the fd (the kernel then destroys the VM: pause first, drivers/virt/acrn/hsm.c:
        acrn_dev_release), then free memory."""
        self.device.close()
        if self.vm is not None:
            self.vm._release_memory()

    def _create_vm_hint(self, name: str | bytes, cpu_affinity: int) -> str:
        """Why CREATE_VM said EINVAL, from the platform when pyacrn emulates it."""
        machine = self._machine
        text = name if isinstance(name, str) else name.decode(errors="replace")
        if machine is None:
            return (
                "the hypervisor refuses a name with no free VM configuration slot and pCPUs outside "
                "the slot's cpu_affinity (hypervisor/common/hypercall.c: hcall_create_vm)"
            )
        platform = machine.platform
        slots = [c for c in platform.vm_configs if c.load_order == "post"]
        named = [c for c in slots if c.name == text and text]
        pool = named or [c for c in slots if c.is_dynamic]
        if not pool:
            return f"no free VM configuration slot for {text!r}: destroy a VM or close its fd"
        allowed = 0
        for c in pool:
            allowed |= c.cpu_affinity
        if cpu_affinity & ~allowed:
            want = [p for p in range(64) if cpu_affinity >> p & 1]
            have = [p for p in range(64) if allowed >> p & 1]
            return (
                f"cpu_affinity {cpu_affinity:#x} asks for pCPUs {want}; the platform has "
                f"{platform.pcpu_num} pCPUs and this VM may use pCPUs {have} (pCPU 0 is the Service "
                f"VM's), so at most {len(have)} vCPUs"
            )
        return f"the hypervisor refused {text!r} (hypervisor/common/hypercall.c: hcall_create_vm)"

    def __enter__(self) -> Hsm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Vm:
    """The VM on one HSM fd. Methods map one-to-one onto ioctls; docs/ioctls.md has each one's checks
    and errno."""

    def __init__(
        self, hsm: Hsm, vmid: int, vcpu_num: int, name: str, ioreq_page: IoreqPage, own_page: bool
    ) -> None:
        self.hsm = hsm
        self.vmid = vmid
        self.vcpu_num = vcpu_num
        self.name = name
        self.ioreq_page = ioreq_page
        self._own_page = own_page
        self.memsegs: list[MemSeg] = []
        self._ram: list[HostMemory] = []
        #: Set by a successful :meth:`destroy` (the fd cannot serve another VM).
        self.destroyed = False

    def __repr__(self) -> str:
        return f"Vm(vmid={self.vmid}, name={self.name!r}, vcpu_num={self.vcpu_num}, device={self.hsm.kind})"

    # ------------------------------------------------------------------ lifecycle
    def _state(self) -> str | None:
        """The hypervisor's state of this VM (``RUNNING``...) when pyacrn emulates it, else None."""
        machine = self.hsm._machine
        if machine is None:
            return None
        hv_vm = machine.hv.vm(self.vmid)
        return None if hv_vm is None else str(hv_vm.state.name)

    def _lifecycle(self, cmd: int, needs: str, fix: str) -> None:
        """A lifecycle ioctl whose bare EPERM (ACRN's -1) is explained by the VM's state."""
        try:
            self.hsm.ioctl(cmd)
        except HsmError as e:
            if e.errno != errno.EPERM:
                raise
            state = self._state()
            now = f"the VM is {state}" if state else "the VM is not in the state it needs"
            raise _with_detail(
                e, f"{now}; this needs {needs} (hypervisor/common/hypercall.c): {fix}"
            ) from None

    def start(self) -> None:
        """ACRN_IOCTL_START_VM: CREATED -> RUNNING (needs the ioreq buffer); only vCPU 0 runs."""
        self._lifecycle(uapi.ACRN_IOCTL_START_VM, "CREATED", "a paused VM is started again after reset()")

    def pause(self) -> None:
        """ACRN_IOCTL_PAUSE_VM. Returns normally even when ACRN leaves an RTVM running
        (hypervisor/common/hypercall.c: hcall_pause_vm)."""
        self.hsm.ioctl(uapi.ACRN_IOCTL_PAUSE_VM)

    def reset(self) -> None:
        """ACRN_IOCTL_RESET_VM: PAUSED -> CREATED; every vCPU gets the real-mode reset state."""
        self._lifecycle(uapi.ACRN_IOCTL_RESET_VM, "PAUSED", "pause() first")

    def destroy(self) -> None:
        """ACRN_IOCTL_DESTROY_VM: needs PAUSED. Guest RAM stays mapped until :meth:`Hsm.close`."""
        self._lifecycle(uapi.ACRN_IOCTL_DESTROY_VM, "PAUSED", "pause() first")
        self.destroyed = True

    # ------------------------------------------------------------------ registers
    def set_vcpu_regs(self, regs: VcpuRegs, vcpu_id: int | None = None, *, strict: bool = False) -> None:
        """ACRN_IOCTL_SET_VCPU_REGS. ``strict`` validates at level ``abi`` first (no ioctl on error).

        An EINVAL or EPERM from the driver or the hypervisor comes back with the validator's
        first error finding (field, rule, source) as the HsmError's detail.
        """
        if not isinstance(regs, VcpuRegs):
            raise TypeError(
                f"regs must be an acrn.regs.VcpuRegs, got {type(regs).__name__} "
                "(acrn.regs.io.load_regs reads a JSON or blob file into one)"
            )
        if vcpu_id is not None and (not isinstance(vcpu_id, int) or not 0 <= vcpu_id <= 0xFFFF):
            raise ValueError(f"vcpu_id {vcpu_id!r} must be an int in 0..65535")
        if vcpu_id is not None:
            regs = regs.copy()
            regs.vcpu_id = vcpu_id
        if strict:
            from acrn.regs.validate import validate

            errors = [f for f in validate(regs, level="abi") if f.severity == "error"]
            if errors:
                raise HsmError(errno.EINVAL, "ACRN_IOCTL_SET_VCPU_REGS", "; ".join(f.message for f in errors))
        try:
            self.hsm.ioctl(uapi.ACRN_IOCTL_SET_VCPU_REGS, regs.to_struct())
        except HsmError as e:
            why = self._regs_hint(e, regs)
            if why is None:
                raise
            raise _with_detail(e, why) from None

    def _regs_hint(self, e: HsmError, regs: VcpuRegs) -> str | None:
        """The validator's first error at the level that gives this errno, or the state rule."""
        from acrn.regs.validate import validate

        if e.errno not in (errno.EINVAL, errno.EPERM):
            return None
        level = "abi" if e.errno == errno.EINVAL else "acrn"
        machine = self.hsm._machine
        kwargs: dict[str, Any] = {"platform": machine.platform} if machine is not None else {}
        try:
            findings = [f for f in validate(regs, level=level, **kwargs) if f.severity == "error"]
        except Exception:  # an explanation must never hide the ioctl's own error
            log.debug("validate failed", exc_info=True)
            findings = []
        if findings:
            f = findings[0]
            more = f" (+{len(findings) - 1} more: acrn regs validate)" if len(findings) > 1 else ""
            return f"{f.rule}: {f.message} [{f.source}]{more}"
        state = self._state()
        if e.errno == errno.EPERM and state not in (None, "CREATED", "PAUSED"):
            return f"the VM is {state}: registers are set in CREATED or PAUSED (pause() first)"
        return None

    def vcpu_state(self, vcpu_id: int = 0) -> CpuState:
        """The vCPU's architectural state (emulator only: the real HSM has no such interface).

        What is live: in a PAUSED VM, the registers the vCPU stopped with (read from the
        accelerator).  What is not: before START (CREATED) and for a vCPU that never ran, the state
        SET_VCPU_REGS (or the reset template) landed.  A RUNNING VM is refused with EBUSY: its
        registers change under the read; pause() first.
        """
        from acrn.arch import CpuState

        getter = getattr(self.hsm.device, "vcpu_state", None)
        if getter is None:
            raise HsmError(errno.ENOTTY, "vcpu_state", "the real HSM has no interface to read vCPU registers")
        return CpuState.from_dict(getter(vcpu_id))

    # ------------------------------------------------------------------ memory
    def set_memseg(self, type_: int, user_vm_pa: int, address: int, length: int, attr: int) -> None:
        """ACRN_IOCTL_SET_MEMSEG. For RAM, ``address`` is a user virtual address (vma_base)."""
        _check_range("user_vm_pa", user_vm_pa, length)
        _check_range("address", address, length)
        m = uapi.acrn_vm_memmap(type=type_, attr=attr, user_vm_pa=user_vm_pa, len=length)
        m.vma_base = address
        self.hsm.ioctl(uapi.ACRN_IOCTL_SET_MEMSEG, m)
        self.memsegs.append(MemSeg(type_, user_vm_pa, address, length, attr))

    def unset_memseg(self, type_: int, user_vm_pa: int, address: int, length: int, attr: int = 0) -> None:
        """ACRN_IOCTL_UNSET_MEMSEG (the HSM only accepts MMIO)."""
        _check_range("user_vm_pa", user_vm_pa, length)
        m = uapi.acrn_vm_memmap(type=type_, attr=attr, user_vm_pa=user_vm_pa, len=length)
        m.service_vm_pa = address
        self.hsm.ioctl(uapi.ACRN_IOCTL_UNSET_MEMSEG, m)
        self.memsegs = [s for s in self.memsegs if (s.type, s.user_vm_pa) != (type_, user_vm_pa)]

    def map_ram(self, gpa: int, size: int, attr: int = uapi.ACRN_MEM_ACCESS_RWX) -> HostMemory:
        """Allocate page-aligned host memory and map it as guest RAM at ``gpa`` (as acrn-dm does).

        The memory is owned by this VM and released when the fd is closed.
        """
        _check_range("gpa", gpa, size)
        mem = HostMemory(size)
        try:
            self.set_memseg(uapi.ACRN_MEMMAP_RAM, gpa, mem.address, mem.size, attr)
        except BaseException:
            mem.close()
            raise
        self._ram.append(mem)
        return mem

    def map_mmio(
        self, gpa: int, service_vm_pa: int, length: int, attr: int = uapi.ACRN_MEM_ACCESS_RWX
    ) -> None:
        """SET_MEMSEG of type MMIO (a host physical range passed through)."""
        self.set_memseg(uapi.ACRN_MEMMAP_MMIO, gpa, service_vm_pa, length, attr)

    # ------------------------------------------------------------------ interrupts
    def inject_msi(self, msi_addr: int, msi_data: int) -> None:
        """ACRN_IOCTL_INJECT_MSI (address 0xFEExxxxx; data bits 7:0 vector, 10:8 delivery mode)."""
        self.hsm.ioctl(uapi.ACRN_IOCTL_INJECT_MSI, uapi.acrn_msi_entry(msi_addr, msi_data))

    def set_irqline(self, gsi: int, op: int) -> None:
        """ACRN_IOCTL_SET_IRQLINE: the u64 {gsi, op} is passed by value (drivers/virt/acrn/hsm.c:
        acrn_dev_ioctl)."""
        self.hsm.ioctl(uapi.ACRN_IOCTL_SET_IRQLINE, uapi.irqline_value(gsi, op))

    def vm_intr_monitor(self, page: HostMemory) -> None:
        """ACRN_IOCTL_VM_INTR_MONITOR: the page's address is passed by value; it must be page-aligned."""
        self.hsm.ioctl(uapi.ACRN_IOCTL_VM_INTR_MONITOR, page.address)

    def irqfd(self, fd: int, msi_addr: int, msi_data: int, *, deassign: bool = False) -> None:
        """ACRN_IOCTL_IRQFD: signalling eventfd ``fd`` injects the MSI."""
        a = uapi.acrn_irqfd(fd=fd, flags=uapi.ACRN_IRQFD_FLAG_DEASSIGN if deassign else 0)
        a.msi.msi_addr, a.msi.msi_data = msi_addr, msi_data
        self.hsm.ioctl(uapi.ACRN_IOCTL_IRQFD, a)

    def ioeventfd(
        self, fd: int, addr: int, length: int, *, pio: bool, data: int | None = None, deassign: bool = False
    ) -> None:
        """ACRN_IOCTL_IOEVENTFD: guest writes at ``addr`` signal eventfd ``fd`` (data-matched if given)."""
        flags = (uapi.ACRN_IOEVENTFD_FLAG_PIO if pio else 0) | (
            uapi.ACRN_IOEVENTFD_FLAG_DEASSIGN if deassign else 0
        )
        if data is not None:
            flags |= uapi.ACRN_IOEVENTFD_FLAG_DATAMATCH
        a = uapi.acrn_ioeventfd(fd=fd, flags=flags, addr=addr, len=length, data=data or 0)
        self.hsm.ioctl(uapi.ACRN_IOCTL_IOEVENTFD, a)

    # ------------------------------------------------------------------ ioreq
    def create_ioreq_client(self) -> None:
        """ACRN_IOCTL_CREATE_IOREQ_CLIENT: the default (userspace) client."""
        self.hsm.ioctl(uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT)

    def attach_ioreq_client(self) -> None:
        """ACRN_IOCTL_ATTACH_IOREQ_CLIENT: block until a request is pending (0 also on a signal)."""
        try:
            self.hsm.device.attach_ioreq_client()
        except OSError as e:
            if isinstance(e, HsmError):
                raise
            raise HsmError(
                e.errno or errno.EIO, uapi.IOCTL_NAMES[uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT]
            ) from None

    # The acrn.dm ioreq loop's client protocol uses this name.
    attach = attach_ioreq_client

    def destroy_ioreq_client(self) -> None:
        """ACRN_IOCTL_DESTROY_IOREQ_CLIENT: wakes a blocked ATTACH with ENODEV."""
        self.hsm.ioctl(uapi.ACRN_IOCTL_DESTROY_IOREQ_CLIENT)

    def clear_vm_ioreq(self) -> None:
        """ACRN_IOCTL_CLEAR_VM_IOREQ: complete every pending request unhandled (for reset)."""
        self.hsm.ioctl(uapi.ACRN_IOCTL_CLEAR_VM_IOREQ)

    def notify_request_finish(self, vcpu: int) -> None:
        """ACRN_IOCTL_NOTIFY_REQUEST_FINISH: the request in ``vcpu``'s slot is handled."""
        from acrn.device import describe_request, trace, trace_note

        if trace.isEnabledFor(logging.DEBUG) and 0 <= vcpu < uapi.ACRN_IO_REQUEST_MAX:
            trace_note(describe_request(self.ioreq_page.slots.req_slot[vcpu]))
        try:
            self.hsm.device.notify_request_finish(self.vmid, vcpu)
        except OSError as e:
            if isinstance(e, HsmError):
                raise
            name = uapi.IOCTL_NAMES[uapi.ACRN_IOCTL_NOTIFY_REQUEST_FINISH]
            raise HsmError(e.errno or errno.EIO, name) from None

    def ioreq_buffer(self) -> uapi.acrn_io_request_buffer:
        """The shared request page (slot i belongs to vCPU i)."""
        return self.ioreq_page.slots

    # ------------------------------------------------------------------ devices and passthrough
    def set_ptdev_intr(
        self, virt_bdf: int, phys_bdf: int, virt_pin: int, phys_pin: int, pic_pin: bool
    ) -> None:
        """ACRN_IOCTL_SET_PTDEV_INTR (INTx remapping of a passthrough device)."""
        self.hsm.ioctl(
            uapi.ACRN_IOCTL_SET_PTDEV_INTR, self._ptdev(virt_bdf, phys_bdf, virt_pin, phys_pin, pic_pin)
        )

    def reset_ptdev_intr(
        self, virt_bdf: int, phys_bdf: int, virt_pin: int, phys_pin: int, pic_pin: bool
    ) -> None:
        """ACRN_IOCTL_RESET_PTDEV_INTR."""
        self.hsm.ioctl(
            uapi.ACRN_IOCTL_RESET_PTDEV_INTR, self._ptdev(virt_bdf, phys_bdf, virt_pin, phys_pin, pic_pin)
        )

    @staticmethod
    def _ptdev(
        virt_bdf: int, phys_bdf: int, virt_pin: int, phys_pin: int, pic_pin: bool
    ) -> uapi.acrn_ptdev_irq:
        a = uapi.acrn_ptdev_irq(type=uapi.ACRN_PTDEV_IRQ_INTX, virt_bdf=virt_bdf, phys_bdf=phys_bdf)
        a.intx.virt_pin, a.intx.phys_pin, a.intx.is_pic_pin = virt_pin, phys_pin, int(pic_pin)
        return a

    def assign_pcidev(self, dev: uapi.acrn_pcidev) -> None:
        """ACRN_IOCTL_ASSIGN_PCIDEV (VM must be CREATED)."""
        self.hsm.ioctl(uapi.ACRN_IOCTL_ASSIGN_PCIDEV, dev)

    def deassign_pcidev(self, dev: uapi.acrn_pcidev) -> None:
        """ACRN_IOCTL_DEASSIGN_PCIDEV."""
        self.hsm.ioctl(uapi.ACRN_IOCTL_DEASSIGN_PCIDEV, dev)

    def assign_mmiodev(self, dev: uapi.acrn_mmiodev) -> None:
        """ACRN_IOCTL_ASSIGN_MMIODEV (VM must be CREATED)."""
        self.hsm.ioctl(uapi.ACRN_IOCTL_ASSIGN_MMIODEV, dev)

    def deassign_mmiodev(self, dev: uapi.acrn_mmiodev) -> None:
        """ACRN_IOCTL_DEASSIGN_MMIODEV."""
        self.hsm.ioctl(uapi.ACRN_IOCTL_DEASSIGN_MMIODEV, dev)

    def create_vdev(self, dev: uapi.acrn_vdev) -> None:
        """ACRN_IOCTL_CREATE_VDEV: a hypervisor-emulated device (ivshmem, vUART, root port)."""
        self.hsm.ioctl(uapi.ACRN_IOCTL_CREATE_VDEV, dev)

    def destroy_vdev(self, dev: uapi.acrn_vdev) -> None:
        """ACRN_IOCTL_DESTROY_VDEV."""
        self.hsm.ioctl(uapi.ACRN_IOCTL_DESTROY_VDEV, dev)

    # ------------------------------------------------------------------ power management
    def pm_get_cpu_state(
        self, cmd_type: int, vcpu_id: int = 0, state_num: int = 0, vmid: int | None = None
    ) -> int | uapi.acrn_pstate_data | uapi.acrn_cstate_data:
        """ACRN_IOCTL_PM_GET_CPU_STATE. The target VM comes from the command word (default: this VM).

        The kernel writes back 8 bytes for the CNT queries, 48 for PX_DATA and 32 for CX_DATA through
        an ioctl encoded as 8 bytes, so the buffer here is sized for the largest answer
        (drivers/virt/acrn/hsm.c: pmcmd_ioctl).
        """
        word = uapi.pm_cmd(self.vmid if vmid is None else vmid, vcpu_id, state_num, cmd_type)
        buf = bytearray(ctypes.sizeof(uapi.acrn_pstate_data))
        buf[0:8] = word.to_bytes(8, "little")
        self.hsm.ioctl(uapi.ACRN_IOCTL_PM_GET_CPU_STATE, buf)
        if cmd_type == uapi.ACRN_PMCMD_GET_PX_DATA:
            return uapi.acrn_pstate_data.from_buffer_copy(buf)
        if cmd_type == uapi.ACRN_PMCMD_GET_CX_DATA:
            return uapi.acrn_cstate_data.from_buffer_copy(buf[:32])
        return int.from_bytes(buf[0:8], "little")

    # ------------------------------------------------------------------ helpers
    def _release_memory(self) -> None:
        for mem in self._ram:
            mem.close()
        self._ram.clear()
        if self._own_page:
            self.ioreq_page.close()


def open_vm(
    name: str = "", *, kind: str = "auto", vm_flag: int = 0, cpu_affinity: int = 0, **kwargs: Any
) -> tuple[Hsm, Vm]:
    """Open an HSM fd and create a VM on it in one call."""
    hsm = Hsm.open(kind, **kwargs)
    try:
        return hsm, hsm.create_vm(name, vm_flag=vm_flag, cpu_affinity=cpu_affinity)
    except BaseException:
        hsm.close()
        raise


__all__: Sequence[str] = ("Hsm", "HsmError", "MemSeg", "Vm", "open_vm")
