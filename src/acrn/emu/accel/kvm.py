"""The KVM accelerator: vCPUs run under Linux ``/dev/kvm``, one thin method per ioctl.

What a guest sees (set up in this order, as Firecracker does): a VM with its TSS at
0xFFFBD000 and the EPT identity map at 0xFFFBC000 (both in the reserved hole below 4 GiB), no
in-kernel irqchip unless asked for (without it HLT exits to userspace, which the emulated ACRN
needs; with it HLT sleeps inside ``KVM_RUN``), the CPUID of :mod:`.kvm_cpuid`, the boot MSRs of
:mod:`.kvm_msrs`, and the x87/SSE reset state.

This module is the accelerator itself; beside it, one concern per file: :mod:`.kvm_abi` (the
``<linux/kvm.h>`` layouts), :mod:`.kvm_irq` (the irqchip ioctls), :mod:`.kvm_sys` (ioctls that name
their request, the kick signal), :mod:`.kvm_cpuid` (the CPUID policy), :mod:`.kvm_msrs` (the MSRs)
and :mod:`.kvm_regs` (``CpuState`` <-> ``kvm_sregs``/``kvm_regs``).

Kicking a vCPU (:meth:`KvmVcpu.kick`) needs the no-op handler of the kick signal
(:func:`install_kick_handler`, from the main thread; :meth:`KvmAccelerator.create_vm` does it for
you when it is called on the main thread).  Without the handler a kick still works, but only at the
next ``KVM_RUN`` entry (through ``kvm_run.immediate_exit``), not for a guest that is already spinning.

With ``irqchip=True`` (what the runtime uses) the VM also offers the optional interrupt and SMP
capabilities of :mod:`acrn.emu.accel.base`:

* one KVM GSI per irqchip input (IOAPIC pin n = GSI 32+n, 8259 pin p = GSI 64+p; GSI 0 stays the
  in-kernel PIT's, wired to PIC pin 0 and IOAPIC pin 2), so that :mod:`acrn.emu.irq` decides the
  wiring; ``KVM_SIGNAL_MSI`` for MSIs; ``KVM_SET_IRQCHIP`` back to the power-on state on reset;
* a halt probe: a thread interrupts any vCPU that stayed inside ``KVM_RUN`` without an exit for
  :data:`HALT_PROBE_PERIOD`, and ``run`` reports :class:`HaltExit` (False) if ``KVM_GET_MP_STATE``
  says HALTED with RFLAGS.IF clear (HLT never exits with an in-kernel irqchip), so
  "cli; hlt" still ends a VM; anything else re-enters the guest unseen;
* ACRN's AP start-up (:meth:`KvmVcpu.power_on`): KVM would reset an AP on INIT; ACRN keeps the
  registers of a vCPU that never ran (``vlapic_process_init_sipi``).  So an AP stays out of
  ``KVM_RUN`` and polls: an INIT latched by its local APIC is taken back through
  ``KVM_GET/SET_VCPU_EVENTS`` (``smi.latched_init``) before KVM processes it, the AP is put in
  INIT_RECEIVED, and ``KVM_GET_MP_STATE`` lets KVM accept the SIPI, which sets CS selector/base and
  RIP only.  After that first start KVM handles INIT/SIPI itself, with KVM's reset values (CR0
  0x60000010, RDX = CPUID.1.EAX) rather than ACRN's template (CR0 0x30, RDX 0): a documented
  difference.  An INIT that arrives between the poll's two ioctls is processed by KVM (a narrow
  window, also documented).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import signal
import struct
import threading
from typing import TYPE_CHECKING, Final

from acrn.arch import CpuState
from acrn.emu.accel import kvm_abi as abi
from acrn.emu.accel import kvm_irq as ki
from acrn.emu.accel import kvm_msrs
from acrn.emu.accel.base import (
    Accelerator,
    AccelVcpu,
    AccelVm,
    EmulationFailureExit,
    EntryFailureExit,
    HaltExit,
    KickExit,
    MmioExit,
    PioExit,
    ShutdownExit,
    StartupExit,
    UnknownExit,
    VmExit,
)
from acrn.emu.accel.kvm_cpuid import build_guest_cpuid, get_supported_cpuid, set_cpuid
from acrn.emu.accel.kvm_msrs import BOOT_MSRS
from acrn.emu.accel.kvm_regs import segment_from_kvm, segment_to_kvm, state_from_kvm, state_to_kvm
from acrn.emu.accel.kvm_sys import (
    KICK_SIGNAL,
    install_kick_handler,
    kick_handler_installed,
    kvm_ioctl,
    kvm_ioctl_ulong,
)

if TYPE_CHECKING:
    from acrn.emu.accel.base import IoExitHandler, IoLoopVcpu

log = logging.getLogger(__name__)

KVM_DEVICE: Final = "/dev/kvm"
#: Firecracker's values (``KVM_TSS_ADDRESS``): 3 pages of TSS and one page of identity map.
TSS_ADDR: Final = 0xFFFBD000
IDENTITY_MAP_ADDR: Final = 0xFFFBC000
PAGE_SIZE: Final = 4096

#: ``hardware_entry_failure_reason`` reported when KVM refuses the state at ``KVM_SET_SREGS``
#: (this KVM checks there, before any VM entry): VMX basic exit reason 33 "VM-entry failure due
#: to invalid guest state" with bit 31 (entry failure) set, which is what VMX hardware reports.
ENTRY_FAILURE_INVALID_STATE: Final = 0x80000021

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_IO = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data, len, is_write
_KICK: Final = KickExit()
#: With the in-kernel irqchip HLT sleeps inside KVM_RUN.  A vCPU that has been inside KVM_RUN
#: for this long without an exit is interrupted (a "halt probe") to see whether it is halted with
#: interrupts disabled, which would otherwise hang silently.
HALT_PROBE_PERIOD: Final = 0.02
#: How often an AP in wait-for-SIPI looks for the guest's INIT/SIPI (backing off to the maximum).
SIPI_POLL_MIN: Final = 0.0005
SIPI_POLL_MAX: Final = 0.01
#: KVM GSI numbers of the routing table this module installs (see KvmVm._set_routing): one KVM GSI
#: per irqchip input, so that the caller decides the wiring.  KVM GSI 0 stays the in-kernel PIT's.
IOAPIC_GSI_BASE: Final = 32
PIC_GSI_BASE: Final = 64
_RFLAGS_IF: Final = 1 << 9
_EINTR: Final = -1


class _Continue:
    """The string I/O of an exit is done: enter KVM_RUN again (see ``KvmVcpu._string_io``)."""


_CONTINUE: Final = _Continue()
_ZERO8: Final = bytes(8)


# --------------------------------------------------------------------------------------------
# Accelerator, VM, vCPU
# --------------------------------------------------------------------------------------------
class KvmAccelerator:
    """Factory of KVM VMs.

    ``irqchip``: create the in-kernel PIC/IOAPIC/LAPIC (then HLT no longer exits).
    ``pit``: with ``irqchip``, also the in-kernel PIT, which then absorbs ports 0x40-0x43 and 0x61;
    ``False`` leaves those ports to exit to userspace like any other (the platform's
    ``pit_owner == "device-model"``, ACRN's own split).
    ``tsc_khz``: what CPUID 0x40000010.EAX reports; ``None`` asks KVM (``KVM_GET_TSC_KHZ``).
    """

    name = "kvm"

    def __init__(self, *, irqchip: bool = False, pit: bool = True, tsc_khz: int | None = None) -> None:
        self.irqchip = irqchip
        self.pit = pit
        self.tsc_khz = tsc_khz

    @staticmethod
    def available() -> tuple[bool, str]:
        """Open /dev/kvm and check the API version and the capabilities this module relies on."""
        try:
            fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            return False, f"{KVM_DEVICE}: {e.strerror}"
        try:
            version = fcntl.ioctl(fd, abi.KVM_GET_API_VERSION, 0)
            if version != abi.KVM_API_VERSION:
                return False, f"KVM API version {version}, need {abi.KVM_API_VERSION}"
            needed = {
                "USER_MEMORY": abi.KVM_CAP_USER_MEMORY,
                "SET_TSS_ADDR": abi.KVM_CAP_SET_TSS_ADDR,
                "SET_IDENTITY_MAP_ADDR": abi.KVM_CAP_SET_IDENTITY_MAP_ADDR,
                "EXT_CPUID": abi.KVM_CAP_EXT_CPUID,
                "IMMEDIATE_EXIT": abi.KVM_CAP_IMMEDIATE_EXIT,
            }
            missing = [n for n, cap in needed.items() if fcntl.ioctl(fd, abi.KVM_CHECK_EXTENSION, cap) <= 0]
            if missing:
                return False, "KVM lacks " + ", ".join(f"KVM_CAP_{n}" for n in missing)
            mmap_size = fcntl.ioctl(fd, abi.KVM_GET_VCPU_MMAP_SIZE, 0)
            if mmap_size < abi.KVM_RUN_SIZE:
                return False, f"vCPU mmap size {mmap_size} < sizeof(kvm_run) {abi.KVM_RUN_SIZE}"
            return True, f"{KVM_DEVICE} API {version}"
        except OSError as e:
            return False, f"{KVM_DEVICE}: {e.strerror}"
        finally:
            os.close(fd)

    def create_vm(self) -> KvmVm:
        """Create a VM (and install the kick handler when called on the main thread)."""
        if threading.current_thread() is threading.main_thread():
            install_kick_handler()
        return KvmVm(irqchip=self.irqchip, pit=self.pit, tsc_khz=self.tsc_khz)


class KvmVm:
    """One KVM VM: its fd, memory slots and vCPUs.  Bring-up order: Firecracker's (TSS, identity map,
    irqchip, PIT, vCPUs)."""

    name = "kvm"

    def __init__(self, *, irqchip: bool = False, pit: bool = True, tsc_khz: int | None = None) -> None:
        self.irqchip = irqchip
        #: Whether KVM's in-kernel PIT exists (it needs the irqchip).
        self.pit = irqchip and pit
        self.tsc_khz = tsc_khz
        self._fd = -1
        self._slots: dict[tuple[int, int], int] = {}
        self._free_slots: list[int] = []
        self._next_slot = 0
        self._vcpus: list[KvmVcpu] = []
        self._lock = threading.Lock()
        self._chip_snapshots: list[ki.kvm_irqchip] = []
        self._probe_thread: threading.Thread | None = None
        self._probe_stop = threading.Event()
        self._boot_cpu_set = False
        kvm_fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        try:
            # The /dev/kvm fd is needed only at creation: the VM fd stands alone afterwards.
            self._fd = kvm_ioctl(kvm_fd, "KVM_CREATE_VM", abi.KVM_CREATE_VM, 0)
            self._mmap_size = kvm_ioctl(kvm_fd, "KVM_GET_VCPU_MMAP_SIZE", abi.KVM_GET_VCPU_MMAP_SIZE, 0)
            self._readonly_ok = fcntl.ioctl(kvm_fd, abi.KVM_CHECK_EXTENSION, abi.KVM_CAP_READONLY_MEM) > 0
            self._supported_cpuid = get_supported_cpuid(kvm_fd)
            kvm_ioctl_ulong(self._fd, "KVM_SET_TSS_ADDR", abi.KVM_SET_TSS_ADDR, TSS_ADDR)
            kvm_ioctl(
                self._fd,
                "KVM_SET_IDENTITY_MAP_ADDR",
                abi.KVM_SET_IDENTITY_MAP_ADDR,
                bytearray(_U64.pack(IDENTITY_MAP_ADDR)),
            )
            if irqchip:
                kvm_ioctl(self._fd, "KVM_CREATE_IRQCHIP", abi.KVM_CREATE_IRQCHIP, 0)
                if self.pit:
                    # SPEAKER_DUMMY: port 0x61 is handled in the kernel too (linux
                    # arch/x86/kvm/i8254.c: kvm_create_pit registers speaker_dev on it), so the
                    # guest's channel-2 gate and OUT2 status never leave KVM.
                    config = abi.kvm_pit_config(flags=abi.KVM_PIT_SPEAKER_DUMMY)
                    kvm_ioctl(self._fd, "KVM_CREATE_PIT2", abi.KVM_CREATE_PIT2, config)
                self._set_routing()
                self._chip_snapshots = [
                    ki.get_irqchip(self._fd, chip)
                    for chip in (ki.KVM_IRQCHIP_PIC_MASTER, ki.KVM_IRQCHIP_PIC_SLAVE, ki.KVM_IRQCHIP_IOAPIC)
                ]
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            raise
        finally:
            os.close(kvm_fd)

    @property
    def fd(self) -> int:
        """The VM fd (for ioctls this class does not wrap, e.g. irqfd later)."""
        return self._fd

    # -- interrupt controllers (irqchip=True only; acrn.emu.accel.base.InterruptController) -------
    @property
    def interrupt_controller(self) -> bool:
        """Whether this VM has the in-kernel IOAPIC, PICs and local APICs."""
        return self.irqchip

    ioapic_pins: Final = ki.KVM_IOAPIC_NUM_PINS

    def _set_routing(self) -> None:
        """One KVM GSI per irqchip input (IOAPIC pin n = GSI 32+n, PIC pin p = GSI 64+p).

        KVM's default table wires GSI n to PIC pin n *and* IOAPIC pin n; the caller needs to drive
        each chip on its own (ACRN mirrors GSI 2 onto PIC pin 0, ``hypervisor/dm/vpic.c:
        vpic_set_irqline``).  GSI 0 is what the in-kernel PIT raises: it goes to PIC pin 0 and IOAPIC pin
        2, the PC wiring that ACRN's vPIT uses too.  Those entries come last because KVM maps (chip, pin)
        back to the last GSI routed to it, and the PIT's interrupt-acknowledge notifier looks its pin up
        that way.
        """
        routes: list[tuple[int, int, int]] = []
        for pin in range(ki.KVM_IOAPIC_NUM_PINS):
            routes.append((IOAPIC_GSI_BASE + pin, ki.KVM_IRQCHIP_IOAPIC, pin))
        for pin in range(16):
            chip = ki.KVM_IRQCHIP_PIC_MASTER if pin < 8 else ki.KVM_IRQCHIP_PIC_SLAVE
            routes.append((PIC_GSI_BASE + pin, chip, pin % 8))
        routes.append((0, ki.KVM_IRQCHIP_PIC_MASTER, 0))
        routes.append((0, ki.KVM_IRQCHIP_IOAPIC, 2))
        ki.set_gsi_routing(self._fd, routes)

    def _require_irqchip(self) -> None:
        self._check_open()
        if not self.irqchip:
            raise RuntimeError("this KVM VM has no in-kernel irqchip (KvmAccelerator(irqchip=True))")

    def set_ioapic_line(self, pin: int, level: bool) -> None:
        """``KVM_IRQ_LINE`` on IOAPIC input ``pin`` (0-23)."""
        self._require_irqchip()
        if not 0 <= pin < ki.KVM_IOAPIC_NUM_PINS:
            raise ValueError(f"IOAPIC pin {pin} out of range (KVM's IOAPIC has {ki.KVM_IOAPIC_NUM_PINS})")
        ki.irq_line(self._fd, IOAPIC_GSI_BASE + pin, int(level))

    def set_pic_line(self, pin: int, level: bool) -> None:
        """``KVM_IRQ_LINE`` on 8259 input ``pin`` (0-7 master, 8-15 slave)."""
        self._require_irqchip()
        if not 0 <= pin < 16:
            raise ValueError(f"PIC pin {pin} out of range (0-15)")
        ki.irq_line(self._fd, PIC_GSI_BASE + pin, int(level))

    def signal_msi(self, address: int, data: int) -> bool:
        """``KVM_SIGNAL_MSI``; False when no local APIC accepted it (e.g. software-disabled)."""
        self._require_irqchip()
        return ki.signal_msi(self._fd, address, data) > 0

    def reset_interrupt_controllers(self) -> None:
        """Every input line low, then the PICs and the IOAPIC as they were right after creation."""
        self._require_irqchip()
        for pin in range(ki.KVM_IOAPIC_NUM_PINS):
            ki.irq_line(self._fd, IOAPIC_GSI_BASE + pin, 0)
        for pin in range(16):
            ki.irq_line(self._fd, PIC_GSI_BASE + pin, 0)
        for chip in self._chip_snapshots:
            ki.set_irqchip(self._fd, chip)

    def _probe_loop(self) -> None:
        """Interrupt vCPUs that stay inside KVM_RUN without exits, so they can check for a halt."""
        seen: dict[int, int] = {}
        while not self._probe_stop.wait(HALT_PROBE_PERIOD):
            with self._lock:
                vcpus = list(self._vcpus)
            for v in vcpus:
                entries = v._entries
                if seen.get(id(v)) == entries:
                    v._probe()
                seen[id(v)] = entries

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError("KVM VM is closed")

    def map_memory(self, gpa: int, size: int, host_addr: int, *, writable: bool = True) -> None:
        """``KVM_SET_USER_MEMORY_REGION``: guest [gpa, gpa+size) is host memory at ``host_addr``.

        All three must be page-aligned.  Read-only slots (``writable=False``) make guest writes
        exit as MMIO writes (KVM_MEM_READONLY).  The host memory must stay mapped until the slot
        is unmapped or the VM closed.
        """
        self._check_open()
        for what, v in (("gpa", gpa), ("size", size), ("host_addr", host_addr)):
            if v % PAGE_SIZE or v < 0:
                raise ValueError(f"map_memory: {what} {v:#x} is not a page-aligned address")
        if size == 0:
            raise ValueError("map_memory: size is 0")
        if not writable and not self._readonly_ok:
            raise OSError(errno.ENOTSUP, "map_memory: this KVM lacks KVM_CAP_READONLY_MEM")
        with self._lock:
            if (gpa, size) in self._slots:
                raise ValueError(f"map_memory: [{gpa:#x}, +{size:#x}) is already mapped")
            slot = self._free_slots.pop() if self._free_slots else self._next_slot
            region = abi.kvm_userspace_memory_region(
                slot=slot,
                flags=0 if writable else abi.KVM_MEM_READONLY,
                guest_phys_addr=gpa,
                memory_size=size,
                userspace_addr=host_addr,
            )
            try:
                kvm_ioctl(self._fd, "KVM_SET_USER_MEMORY_REGION", abi.KVM_SET_USER_MEMORY_REGION, region)
            except OSError:
                if slot != self._next_slot:
                    self._free_slots.append(slot)
                raise
            if slot == self._next_slot:
                self._next_slot += 1
            self._slots[(gpa, size)] = slot

    def unmap_memory(self, gpa: int, size: int) -> None:
        """Delete the slot made by :meth:`map_memory` with this gpa and size (memory_size 0)."""
        self._check_open()
        with self._lock:
            slot = self._slots.get((gpa, size))
            if slot is None:
                raise ValueError(f"unmap_memory: [{gpa:#x}, +{size:#x}) is not mapped")
            region = abi.kvm_userspace_memory_region(slot=slot, guest_phys_addr=gpa)
            kvm_ioctl(self._fd, "KVM_SET_USER_MEMORY_REGION", abi.KVM_SET_USER_MEMORY_REGION, region)
            del self._slots[(gpa, size)]
            self._free_slots.append(slot)

    def create_vcpu(self, vcpu_id: int, apic_id: int | None = None) -> KvmVcpu:
        """``KVM_CREATE_VCPU`` plus the vCPU bring-up (kvm_run mmap, CPUID, MSRs, FPU, LAPIC).

        KVM numbers a vCPU's local APIC by the id it was created with, so the KVM vCPU id is
        ``apic_id`` (default ``vcpu_id``); the first vCPU created is the boot CPU.
        """
        self._check_open()
        apic = vcpu_id if apic_id is None else apic_id
        with self._lock:
            first = not self._vcpus and not self._boot_cpu_set
            self._boot_cpu_set = True
        if first and apic != 0:
            # KVM's boot CPU is id 0 unless told otherwise (KVM_SET_BOOT_CPU_ID, before any vCPU).
            try:
                kvm_ioctl_ulong(self._fd, "KVM_SET_BOOT_CPU_ID", abi.KVM_SET_BOOT_CPU_ID, apic)
            except OSError as e:
                log.debug("KVM_SET_BOOT_CPU_ID(%d): %s", apic, e)
        vcpu = KvmVcpu(self, vcpu_id, apic)
        with self._lock:
            self._vcpus.append(vcpu)
            if self.irqchip and self._probe_thread is None:
                self._probe_thread = threading.Thread(
                    target=self._probe_loop, name="kvm-halt-probe", daemon=True
                )
                self._probe_thread.start()
        return vcpu

    def _forget_vcpu(self, vcpu: KvmVcpu) -> None:
        with self._lock:
            if vcpu in self._vcpus:
                self._vcpus.remove(vcpu)

    def close(self) -> None:
        """Close every vCPU, then the VM fd (which drops the memory slots).  Idempotent."""
        self._probe_stop.set()
        if self._probe_thread is not None and self._probe_thread is not threading.current_thread():
            self._probe_thread.join()
        with self._lock:
            vcpus = list(self._vcpus)
        for v in vcpus:
            v.close()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._slots.clear()
            self._free_slots.clear()

    def __enter__(self) -> KvmVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KvmVcpu:
    """One KVM vCPU: its fd and the mmap'd ``kvm_run`` through which exits are read.

    After a PIO/MMIO exit KVM finishes the instruction only at the next ``KVM_RUN``.  So that
    :meth:`get_state` and :meth:`set_state` see a finished instruction, they first complete a
    pending access with a ``KVM_RUN`` under ``immediate_exit`` (the method KVM documents),
    except that :meth:`get_state` leaves a read that still waits for :meth:`complete_read` (or
    a string I/O with elements left) alone and reports the state before the instruction.
    """

    def __init__(self, vm: KvmVm, vcpu_id: int, apic_id: int | None = None) -> None:
        self.vcpu_id = vcpu_id
        self.apic_id = vcpu_id if apic_id is None else apic_id
        self._vm = vm
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._thread: int | None = None  # ident of the thread inside KVM_RUN, for kick()
        self._closed = False
        self._entry_failure: str | None = None
        # I/O completion state (see class docstring).
        self._completion_pending = False  # an IO/MMIO exit was returned and KVM_RUN not yet called
        self._read_offset = -1  # where complete_read() writes, or -1 when no read waits
        self._read_size = 0
        self._read_waiting = False
        self._str_port = 0  # string I/O (rep ins/outs): remaining elements
        self._str_size = 0
        self._str_write = False
        self._str_offset = 0
        self._str_left = 0
        self._sregs = abi.kvm_sregs()
        self._regs = abi.kvm_regs()
        # In-kernel irqchip state (see run(), power_on()).
        self._entries = 0  # KVM_RUN calls so far, for the halt probe
        self._kicked = False  # kick() was called and run() has not returned KickExit for it yet
        self._wait_sipi = False  # an AP that has not been started by INIT/SIPI yet
        self._init_seen = False
        self._lapic_snapshot: bytearray | None = None
        self._fd = kvm_ioctl(vm.fd, "KVM_CREATE_VCPU", abi.KVM_CREATE_VCPU, self.apic_id)
        try:
            self._run = mmap.mmap(self._fd, vm._mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._bring_up()
        except BaseException:
            if hasattr(self, "_run"):
                self._run.close()
            os.close(self._fd)
            raise

    # -- bring-up ---------------------------------------------------------------------------
    def _bring_up(self) -> None:
        tsc_khz = self._vm.tsc_khz
        if tsc_khz is None:
            try:
                tsc_khz = fcntl.ioctl(self._fd, abi.KVM_GET_TSC_KHZ, 0)
            except OSError:
                tsc_khz = 0
        cpuid = build_guest_cpuid(self._vm._supported_cpuid, vcpu_id=self.apic_id, tsc_khz=int(tsc_khz))
        set_cpuid(self._fd, cpuid)
        kvm_msrs.set_msrs(self._fd, BOOT_MSRS)
        fpu = abi.kvm_fpu(fcw=0x37F, mxcsr=0x1F80)
        kvm_ioctl(self._fd, "KVM_SET_FPU", abi.KVM_SET_FPU, fpu)
        if self._vm.irqchip:
            self._set_lint()
            self._lapic_snapshot = bytearray(ctypes.sizeof(abi.kvm_lapic_state))
            kvm_ioctl(self._fd, "KVM_GET_LAPIC", abi.KVM_GET_LAPIC, self._lapic_snapshot)

    # -- SMP start-up (irqchip=True only; acrn.emu.accel.base.MultiprocessorVcpu) -----------------
    @property
    def multiprocessor(self) -> bool:
        """Whether :meth:`power_on` works (it needs the in-kernel local APIC)."""
        return self._vm.irqchip

    def power_on(self, *, wait_for_sipi: bool) -> None:
        """Local APIC and pending events as after creation; then runnable (BSP) or wait-for-SIPI (AP).

        KVM's own wait-for-SIPI would reset every register on the guest's INIT; ACRN does not reset
        a vCPU that never ran (``hypervisor/arch/x86/guest/vlapic.c: vlapic_process_init_sipi``).  So an AP
        is kept out of ``KVM_RUN`` until it has been started: :meth:`run` consumes INITs through the vCPU
        events before KVM processes them, then lets KVM deliver the SIPI, which sets only CS and RIP.
        """
        self._check_open()
        if self._lapic_snapshot is None:
            raise RuntimeError("power_on needs the in-kernel irqchip (KvmAccelerator(irqchip=True))")
        self._flush_completion()
        kvm_ioctl(self._fd, "KVM_SET_LAPIC", abi.KVM_SET_LAPIC, bytearray(self._lapic_snapshot))
        # No pending exception, interrupt, NMI or latched INIT.
        ki.set_vcpu_events(
            self._fd,
            ki.kvm_vcpu_events(flags=ki.KVM_VCPUEVENT_VALID_SMM | ki.KVM_VCPUEVENT_VALID_NMI_PENDING),
        )
        ki.set_mp_state(
            self._fd, ki.KVM_MP_STATE_UNINITIALIZED if wait_for_sipi else ki.KVM_MP_STATE_RUNNABLE
        )
        self._wait_sipi = wait_for_sipi
        self._init_seen = False

    def _wait_for_sipi(self) -> VmExit:
        """Block until INIT then SIPI start this AP (StartupExit) or kick() is called (KickExit)."""
        with self._lock:
            if self._closed:
                raise ValueError(f"KVM vCPU {self.vcpu_id} is closed")
            self._thread = threading.get_ident()  # close() waits for this thread to leave
        try:
            return self._poll_for_sipi()
        finally:
            with self._lock:
                self._thread = None
                self._cond.notify_all()

    def _poll_for_sipi(self) -> VmExit:
        delay = SIPI_POLL_MIN
        while True:
            with self._lock:
                if self._closed:
                    raise ValueError(f"KVM vCPU {self.vcpu_id} is closed")
                if self._kicked:
                    self._kicked = False
                    self._run[abi.RUN_IMMEDIATE_EXIT] = 0
                    return _KICK
            if ki.take_latched_init(self._fd):
                # The AP never ran: the INIT only arms it for a SIPI (ACRN's nr_sipi = 1).
                ki.set_mp_state(self._fd, ki.KVM_MP_STATE_INIT_RECEIVED)
                self._init_seen = True
                delay = SIPI_POLL_MIN
            # KVM_GET_MP_STATE makes KVM accept a pending SIPI, which starts an INIT_RECEIVED vCPU.
            if self._init_seen and ki.get_mp_state(self._fd) == ki.KVM_MP_STATE_RUNNABLE:
                self._wait_sipi = False
                self._init_seen = False
                kvm_ioctl(self._fd, "KVM_GET_SREGS", abi.KVM_GET_SREGS, self._sregs)
                return StartupExit(self._sregs.cs.selector >> 8)
            with self._cond:
                if not self._kicked and not self._closed:
                    self._cond.wait(delay)
            delay = min(delay * 2, SIPI_POLL_MAX)

    def _probe(self) -> None:
        """Interrupt KVM_RUN (no immediate_exit, not a kick) so that run() checks for a halt."""
        with self._lock:
            if (
                self._thread is not None
                and not self._wait_sipi
                and not self._closed
                and kick_handler_installed()
            ):
                signal.pthread_kill(self._thread, KICK_SIGNAL)

    def _halted_with_interrupts_disabled(self) -> bool:
        if ki.get_mp_state(self._fd) != ki.KVM_MP_STATE_HALTED:
            return False
        kvm_ioctl(self._fd, "KVM_GET_REGS", abi.KVM_GET_REGS, self._regs)
        return not self._regs.rflags & _RFLAGS_IF

    def set_msrs(self, msrs: dict[int, int]) -> None:
        """``KVM_SET_MSRS``; OSError(EINVAL) names the first MSR KVM refuses."""
        self._check_open()
        kvm_msrs.set_msrs(self._fd, msrs)

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """``KVM_GET_MSRS``: the current value of each MSR KVM reports (those it refuses are left out)."""
        self._check_open()
        return kvm_msrs.get_msrs(self._fd, indices)

    def _set_lint(self) -> None:
        """LAPIC LVT LINT0 = ExtINT, LINT1 = NMI, so the in-kernel 8259 reaches the CPU (Firecracker's
        ``set_lint``)."""
        raw = bytearray(ctypes.sizeof(abi.kvm_lapic_state))
        kvm_ioctl(self._fd, "KVM_GET_LAPIC", abi.KVM_GET_LAPIC, raw)
        for offset, mode in ((0x350, 7), (0x360, 4)):
            v = _U32.unpack_from(raw, offset)[0]
            _U32.pack_into(raw, offset, (v & ~0x700) | (mode << 8))
        kvm_ioctl(self._fd, "KVM_SET_LAPIC", abi.KVM_SET_LAPIC, raw)

    # -- state --------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"KVM vCPU {self.vcpu_id} is closed")

    def _flush_completion(self) -> None:
        """Let KVM finish a pending PIO/MMIO instruction without running the guest further."""
        if not self._completion_pending:
            return
        self._str_left = 0
        self._read_offset = -1
        self._read_waiting = False
        with self._lock:
            # Under the lock so that a concurrent kick() is not overwritten (it would be lost).
            run = self._run
            kicked = run[abi.RUN_IMMEDIATE_EXIT]
            run[abi.RUN_IMMEDIATE_EXIT] = 1
            try:
                fcntl.ioctl(self._fd, abi.KVM_RUN, 0)
            except InterruptedError:
                pass
            except OSError as e:
                raise OSError(e.errno, f"KVM_RUN (completing I/O): {os.strerror(e.errno or 0)}") from None
            finally:
                run[abi.RUN_IMMEDIATE_EXIT] = kicked
            self._completion_pending = False

    def set_state(self, state: CpuState) -> None:
        """``KVM_SET_SREGS`` + ``KVM_SET_REGS`` from an architectural state.

        If this KVM refuses the state (EINVAL from ``KVM_SET_SREGS``, its pre-entry consistency
        check), the refusal is reported as the next :meth:`run`'s :class:`EntryFailureExit`, as
        a VM entry would; until a later ``set_state`` succeeds, every ``run`` reports it.
        """
        self._check_open()
        self._flush_completion()
        sregs = self._sregs
        kvm_ioctl(self._fd, "KVM_GET_SREGS", abi.KVM_GET_SREGS, sregs)  # keeps apic_base, cr8, pending irq
        regs = self._regs
        state_to_kvm(state, sregs, regs)
        try:
            fcntl.ioctl(self._fd, abi.KVM_SET_SREGS, sregs)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise OSError(e.errno, f"KVM_SET_SREGS: {os.strerror(e.errno or 0)}") from None
            self._entry_failure = (
                f"KVM_SET_SREGS refused the state (EINVAL): mode {state.mode}, cr0={state.cr0:#x} "
                f"cr4={state.cr4:#x} efer={state.efer:#x} cs.ar={state.cs.ar:#x}"
            )
            return
        kvm_ioctl(self._fd, "KVM_SET_REGS", abi.KVM_SET_REGS, regs)
        self._entry_failure = None
        if self._vm.irqchip and not self._wait_sipi:
            # A loaded state is an active one (ACRN's init_vmcs: activity state 0), even if the
            # vCPU had halted in the kernel before.
            ki.set_mp_state(self._fd, ki.KVM_MP_STATE_RUNNABLE)

    def get_state(self) -> CpuState:
        """``KVM_GET_SREGS`` + ``KVM_GET_REGS`` as an architectural state (see class docstring)."""
        self._check_open()
        if not self._read_waiting and not self._str_left:
            self._flush_completion()
        sregs = self._sregs
        regs = self._regs
        kvm_ioctl(self._fd, "KVM_GET_SREGS", abi.KVM_GET_SREGS, sregs)
        kvm_ioctl(self._fd, "KVM_GET_REGS", abi.KVM_GET_REGS, regs)
        return state_from_kvm(sregs, regs)

    # -- running ------------------------------------------------------------------------------
    def run(self) -> VmExit:
        """Run the vCPU until the next exit (``KVM_RUN``) and translate the exit."""
        ex = self.run_io(None)
        assert ex is not None  # without a handler every exit is returned
        return ex

    #: :class:`acrn.emu.accel.base.IoLoopVcpu`: :meth:`run_io` is offered.
    io_loop = True

    def run_io(self, handler: IoExitHandler | None) -> VmExit | None:
        """Run, handing each PIO/MMIO access to ``handler`` in place; :meth:`run` is ``run_io(None)``.

        ``handler(is_mmio, address, size, is_write, value)`` returns the value of a read (anything
        for a write) and KVM_RUN is entered again at once, with no exit object built and no lock
        taken per exit: the loop registers this thread for :meth:`kick` once, for its whole
        duration.  String I/O goes to the handler one element at a time.  It returns the first
        exit of another kind, or None as soon as ``handler`` returns None: the access is then the
        caller's, exactly as after :meth:`run` returned it (:meth:`complete_read`, or abandoned).
        Without a handler the first exit of any kind is returned.  A kick or close while the
        handler runs makes the next KVM_RUN return at once (sticky).
        """
        if self._closed:
            raise ValueError(f"KVM vCPU {self.vcpu_id} is closed")
        if self._str_left:
            ex = self._string_io(handler)
            if not isinstance(ex, _Continue):
                return ex
        if self._entry_failure is not None:
            return EntryFailureExit(ENTRY_FAILURE_INVALID_STATE, self._entry_failure)
        if self._wait_sipi:
            return self._wait_for_sipi()
        lock = self._lock
        with lock:
            if self._closed:
                raise ValueError(f"KVM vCPU {self.vcpu_id} is closed")
            self._thread = threading.get_ident()
        try:
            return self._loop(handler)
        finally:
            with lock:
                self._thread = None
                if self._closed:
                    self._cond.notify_all()

    def _loop(self, handler: IoExitHandler | None) -> VmExit | None:
        """The KVM_RUN loop of :meth:`run_io` (the caller registered this thread for kicks); the
        one place where an I/O exit is decoded."""
        fd = self._fd
        run = self._run
        ioctl = fcntl.ioctl
        kvm_run = abi.KVM_RUN
        unpack_reason = _U32.unpack_from
        unpack_io = _IO.unpack_from
        from_bytes = int.from_bytes
        while True:
            if self._closed:  # close() waits for this thread: the fd is still open here
                raise ValueError(f"KVM vCPU {self.vcpu_id} is closed")
            self._read_offset = -1
            self._read_waiting = False
            self._entries += 1
            try:
                ioctl(fd, kvm_run, 0)
                reason = unpack_reason(run, abi.RUN_EXIT_REASON)[0]
                self._completion_pending = False
            except InterruptedError:
                # Whether KVM finished a pending I/O before noticing the kick depends on the kernel
                # version; keep the flag so get_state/set_state complete it (a no-op if done).
                reason = _EINTR
            except OSError as e:
                raise OSError(e.errno, f"KVM_RUN: {os.strerror(e.errno or 0)}") from None
            if reason == abi.KVM_EXIT_IO:
                direction, size, port, count, offset = unpack_io(run, abi.RUN_IO_DIRECTION)
                self._completion_pending = True
                if count != 1:
                    self._str_port = port
                    self._str_size = size
                    self._str_write = direction == abi.KVM_EXIT_IO_OUT
                    self._str_offset = offset
                    self._str_left = count
                    if not self._str_write:
                        run[offset : offset + count * size] = bytes(count * size)
                    ex = self._string_io(handler)
                    if not isinstance(ex, _Continue):
                        return ex
                    continue
                if direction == abi.KVM_EXIT_IO_OUT:
                    value = from_bytes(run[offset : offset + size], "little")
                    if handler is None:
                        return PioExit(port, size, True, value)
                    if handler(False, port, size, True, value) is None:
                        return None
                    continue
                run[offset : offset + size] = _ZERO8[:size]  # an unanswered read reads 0
                self._read_offset = offset
                self._read_size = size
                self._read_waiting = True
                if handler is None:
                    return PioExit(port, size, False)
                read = handler(False, port, size, False, 0)
                if read is None:
                    return None
                run[offset : offset + size] = (read & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
                self._read_waiting = False
                continue
            if reason == abi.KVM_EXIT_MMIO:
                addr, data, length, is_write = _MMIO.unpack_from(run, abi.RUN_MMIO_PHYS_ADDR)
                self._completion_pending = True
                if is_write:
                    value = from_bytes(data[:length], "little")
                    if handler is None:
                        return MmioExit(addr, length, True, value)
                    if handler(True, addr, length, True, value) is None:
                        return None
                    continue
                run[abi.RUN_MMIO_DATA : abi.RUN_MMIO_DATA + 8] = _ZERO8
                self._read_offset = abi.RUN_MMIO_DATA
                self._read_size = length
                self._read_waiting = True
                if handler is None:
                    return MmioExit(addr, length, False)
                read = handler(True, addr, length, False, 0)
                if read is None:
                    return None
                self.complete_read(read)
                continue
            ex = self._other_exit(reason)
            if ex is not None:
                return ex

    def _string_io(self, handler: IoExitHandler | None) -> VmExit | _Continue | None:
        """The elements left of a ``rep ins/outs`` exit: each to ``handler``, or the next one
        returned without a handler; ``_CONTINUE`` once all are done (KVM_RUN then finishes the
        instruction)."""
        while self._str_left:
            ex = self._next_string_element()
            if handler is None:
                return ex
            value = handler(False, ex.port, ex.size, ex.is_write, ex.value)
            if value is None:
                return None
            if not ex.is_write:
                self.complete_read(value)
        return _CONTINUE

    def _other_exit(self, reason: int) -> VmExit | None:
        """The exit of a KVM_RUN that ended with ``reason`` other than I/O (``_EINTR`` for EINTR);
        None: re-enter."""
        run = self._run
        lock = self._lock
        if reason == _EINTR or reason == abi.KVM_EXIT_INTR:
            # Consume the kick; one that lands between KVM_RUN returning and here is merged into
            # this KickExit (kick() promises that the current or next run returns KickExit).
            with lock:
                kicked = self._kicked
                self._kicked = False
                if kicked or not self._vm.irqchip:
                    run[abi.RUN_IMMEDIATE_EXIT] = 0
                    return _KICK
            # A halt probe: HLT with IF=0 would sleep forever in the kernel; report it as the
            # HLT exit it is without an irqchip.  Anything else re-enters the guest.
            if self._halted_with_interrupts_disabled():
                return HaltExit(False)
            return None
        if reason == abi.KVM_EXIT_HLT:
            return HaltExit(bool(run[abi.RUN_IF_FLAG]))
        return self._rare_exit(reason)

    def _next_string_element(self) -> PioExit:
        """One element of a ``rep ins/outs`` exit (KVM reports ``count`` elements at once)."""
        size = self._str_size
        offset = self._str_offset
        self._str_offset = offset + size
        self._str_left -= 1
        if self._str_write:
            return PioExit(
                self._str_port, size, True, int.from_bytes(self._run[offset : offset + size], "little")
            )
        self._read_offset = offset
        self._read_size = size
        self._read_waiting = True
        return PioExit(self._str_port, size, False)

    def _rare_exit(self, reason: int) -> VmExit:
        run = self._run
        if reason == abi.KVM_EXIT_SHUTDOWN:
            return ShutdownExit("triple fault (KVM_EXIT_SHUTDOWN)")
        if reason == abi.KVM_EXIT_FAIL_ENTRY:
            hw = _U64.unpack_from(run, abi.RUN_FAIL_ENTRY_REASON)[0]
            cpu = _U32.unpack_from(run, abi.RUN_FAIL_ENTRY_CPU)[0]
            return EntryFailureExit(hw, f"KVM_EXIT_FAIL_ENTRY reason {hw:#x} on host cpu {cpu}")
        if reason == abi.KVM_EXIT_INTERNAL_ERROR:
            suberror = _U32.unpack_from(run, abi.RUN_INTERNAL_SUBERROR)[0]
            ndata = min(_U32.unpack_from(run, abi.RUN_INTERNAL_NDATA)[0], 16)
            data = struct.unpack_from(f"<{ndata}Q", run, abi.RUN_INTERNAL_DATA)
            insn = b""
            # emulation_failure view: data[0] = flags, then insn_size and up to 15 bytes.
            if (
                suberror == abi.KVM_INTERNAL_ERROR_EMULATION
                and ndata >= 3
                and data[0] & abi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
            ):
                n = min(run[abi.RUN_EMULATION_FAILURE_INSN_SIZE], 15)
                start = abi.RUN_EMULATION_FAILURE_INSN_BYTES
                insn = bytes(run[start : start + n])
            names = {1: "emulation failure", 2: "exception while handling an exception", 3: "event delivery"}
            detail = f"KVM_EXIT_INTERNAL_ERROR {names.get(suberror, 'suberror')} {suberror}"
            detail += " data=[" + ", ".join(f"{d:#x}" for d in data) + "]"
            return EmulationFailureExit(suberror, detail, insn)
        if reason == abi.KVM_EXIT_SYSTEM_EVENT:
            kind = _U32.unpack_from(run, abi.RUN_SYSTEM_EVENT_TYPE)[0]
            names = {1: "shutdown", 2: "reset", 3: "crash"}
            return ShutdownExit(f"KVM_EXIT_SYSTEM_EVENT {names.get(kind, str(kind))}")
        return UnknownExit(reason, f"KVM exit reason {reason}")

    def complete_read(self, value: int) -> None:
        """Supply the value of the last PIO/MMIO read; KVM loads it at the next ``KVM_RUN``."""
        if not self._read_waiting:
            raise RuntimeError("complete_read: the last exit was not a read waiting for its value")
        size = self._read_size
        offset = self._read_offset
        self._run[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self._read_waiting = False

    def get_fpu(self) -> abi.kvm_fpu:
        """``KVM_GET_FPU``: the x87 and SSE registers (the fallback hands them to the soft CPU)."""
        self._check_open()
        fpu = abi.kvm_fpu()
        kvm_ioctl(self._fd, "KVM_GET_FPU", abi.KVM_GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu: abi.kvm_fpu) -> None:
        """``KVM_SET_FPU``."""
        self._check_open()
        kvm_ioctl(self._fd, "KVM_SET_FPU", abi.KVM_SET_FPU, fpu)

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        """Deliver exception ``vector`` through the guest's IDT at the next ``run``.

        ``KVM_SET_VCPU_EVENTS`` with ``exception.injected``: the current RIP is what the handler
        sees as the return address (a trap such as #BP needs RIP past the instruction).  Used by
        :mod:`acrn.emu.accel.fallback` for instructions this KVM cannot emulate (README.md, "Booting Linux").
        """
        self._check_open()
        self._flush_completion()
        ev = ki.get_vcpu_events(self._fd)
        ev.exception.injected = 1
        ev.exception.pending = 0
        ev.exception.nr = vector & 0xFF
        ev.exception.has_error_code = int(error_code is not None)
        ev.exception.error_code = (error_code or 0) & 0xFFFFFFFF
        ev.exception_has_payload = 0
        ev.flags = 0
        ki.set_vcpu_events(self._fd, ev)

    def inject_interrupt(self, vector: int) -> None:
        """Deliver interrupt ``vector`` through the guest's IDT at the next ``run``, whatever IF.

        ``KVM_SET_VCPU_EVENTS`` with ``interrupt.injected`` (not ``soft``: the return address
        pushed is the current RIP, which the caller sets past an ``INT n``; a soft injection
        would add an instruction length userspace cannot set).  The gate's DPL is not checked,
        as for any external interrupt: :mod:`acrn.emu.accel.fallback` checks it before, as INT n does.
        """
        self._check_open()
        self._flush_completion()
        ev = ki.get_vcpu_events(self._fd)
        ev.interrupt.injected = 1
        ev.interrupt.nr = vector & 0xFF
        ev.interrupt.soft = 0
        ev.flags = 0
        ki.set_vcpu_events(self._fd, ev)

    def kick(self) -> None:
        """Thread-safe: make the current ``run`` (or the next one) return :class:`KickExit`.

        ``immediate_exit`` covers a vCPU that is not yet inside ``KVM_RUN``; the signal covers
        one that is (KVM reads ``immediate_exit`` only at entry).  Written before the signal is
        sent, so one of the two always lands.
        """
        with self._lock:
            if self._closed:
                return
            self._kicked = True
            self._run[abi.RUN_IMMEDIATE_EXIT] = 1
            if self._thread is not None and kick_handler_installed():
                signal.pthread_kill(self._thread, KICK_SIGNAL)
            self._cond.notify_all()  # an AP waiting for its SIPI

    def close(self) -> None:
        """Stop a running ``KVM_RUN`` (kick and wait), then release the mmap and the fd."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while self._thread is not None:
                self._run[abi.RUN_IMMEDIATE_EXIT] = 1
                if kick_handler_installed():
                    signal.pthread_kill(self._thread, KICK_SIGNAL)
                self._cond.wait(0.1)
            self._run.close()
            os.close(self._fd)
            self._fd = -1
        self._vm._forget_vcpu(self)


if TYPE_CHECKING:
    # mypy proves here that the classes satisfy the accelerator protocols of base.py.
    _accelerator_check: Accelerator = KvmAccelerator()
    _vm_check: AccelVm = KvmVm()
    _vcpu_check: AccelVcpu = KvmVcpu(KvmVm(), 0)
    _io_loop_check: IoLoopVcpu = KvmVcpu(KvmVm(), 0)

#: What this module offers, with the names of its sibling modules that callers have always imported
#: from here (the kick handler, the CPUID policy, the segment conversion).
__all__ = [
    "BOOT_MSRS",
    "ENTRY_FAILURE_INVALID_STATE",
    "HALT_PROBE_PERIOD",
    "IDENTITY_MAP_ADDR",
    "IOAPIC_GSI_BASE",
    "KICK_SIGNAL",
    "KVM_DEVICE",
    "PAGE_SIZE",
    "PIC_GSI_BASE",
    "SIPI_POLL_MAX",
    "SIPI_POLL_MIN",
    "TSS_ADDR",
    "KvmAccelerator",
    "KvmVcpu",
    "KvmVm",
    "build_guest_cpuid",
    "get_supported_cpuid",
    "install_kick_handler",
    "kick_handler_installed",
    "segment_from_kvm",
    "segment_to_kvm",
]
