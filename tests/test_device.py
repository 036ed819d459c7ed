"""acrn.device: transport selection, fcntl-like ioctl semantics, and the strace-like trace."""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os

import pytest

from acrn import uapi
from acrn.device import EmulatedDevice, KernelDevice, open_device
from acrn.emu.machine import Machine


def _page() -> tuple[mmap.mmap, int]:
    m = mmap.mmap(-1, 4096)
    holder = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(holder)
    del holder
    return m, addr


def test_open_device_auto_picks_emulator_without_dev_acrn_hsm(tmp_path: object) -> None:
    with open_device("auto", path="/nonexistent/acrn_hsm") as dev:
        assert dev.kind == "emulated" and isinstance(dev, EmulatedDevice)
        assert "emulated" in dev.description
        assert dev.fileno() is None


def test_open_device_auto_picks_kernel_when_node_exists(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "acrn_hsm")
    open(path, "w").close()
    with open_device("auto", path=path) as dev:
        assert dev.kind == "kernel" and isinstance(dev, KernelDevice)
        assert dev.fileno() is not None and path in dev.description


def test_open_device_unknown_kind_is_valueerror() -> None:
    with pytest.raises(ValueError):
        open_device("qemu")


def test_kernel_device_ioctl_errors_come_from_the_kernel(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "f")
    open(path, "w").close()
    dev = KernelDevice(path)
    with pytest.raises(OSError) as ei:
        dev.ioctl(uapi.ACRN_IOCTL_CREATE_VM, bytearray(48))
    assert ei.value.errno == errno.ENOTTY  # a regular file knows no ioctl
    with pytest.raises(OSError) as ei:
        dev.ioctl(uapi.ACRN_IOCTL_SET_IRQLINE, uapi.irqline_value(1, 2))  # a 64-bit value passes
    assert ei.value.errno == errno.ENOTTY
    dev.close()
    assert dev.fileno() is None


def test_emulated_device_updates_ctypes_struct_in_place() -> None:
    m, addr = _page()
    with EmulatedDevice(Machine()) as dev:
        c = uapi.acrn_vm_creation(ioreq_buf=addr)
        ctypes.memmove(c.uuid.b, b"dev-test", 8)
        assert dev.ioctl(uapi.ACRN_IOCTL_CREATE_VM, c) == 0
        assert c.vmid == dev.vmid != uapi.ACRN_INVALID_VMID
        state = dev.vcpu_state(0)
        assert state["rip"] == 0xFFF0 and state["cs"]["selector"] == 0xF000 and state["mode"] == "real"
    m.close()


def test_emulated_device_bytes_argument_is_not_written_back() -> None:
    m, addr = _page()
    with EmulatedDevice(Machine()) as dev:
        raw = bytes(uapi.acrn_vm_creation(ioreq_buf=addr))
        assert dev.ioctl(uapi.ACRN_IOCTL_CREATE_VM, raw) == 0
        assert raw == bytes(uapi.acrn_vm_creation(ioreq_buf=addr))
    m.close()


def test_emulated_device_vcpu_state_without_vm_is_einval() -> None:
    with EmulatedDevice(Machine()) as dev:
        with pytest.raises(OSError) as ei:
            dev.vcpu_state(0)
        assert ei.value.errno == errno.EINVAL


def test_closed_device_is_ebadf() -> None:
    dev = EmulatedDevice(Machine())
    dev.close()
    dev.close()  # idempotent
    with pytest.raises(OSError) as ei:
        dev.ioctl(uapi.ACRN_IOCTL_START_VM)
    assert ei.value.errno == errno.EBADF


def test_trace_logs_name_argument_and_result(caplog: pytest.LogCaptureFixture) -> None:
    m, addr = _page()
    with caplog.at_level(logging.DEBUG, logger="acrn.trace"), EmulatedDevice(Machine()) as dev:
        with pytest.raises(OSError):
            dev.ioctl(uapi.ACRN_IOCTL_START_VM, 0)
        dev.ioctl(uapi.ACRN_IOCTL_CREATE_VM, uapi.acrn_vm_creation(ioreq_buf=addr))
        dev.ioctl(uapi.ACRN_IOCTL_SET_IRQLINE, uapi.irqline_value(3, 0))
    lines = [r.getMessage() for r in caplog.records if r.name == "acrn.trace"]
    assert lines[0] == "ACRN_IOCTL_START_VM() = -1 EINVAL (Invalid argument)"
    assert lines[1].startswith("ACRN_IOCTL_CREATE_VM({vmid=0,") and " = 0 => {vmid=" in lines[1]
    assert f"ioreq_buf={addr:#x}" in lines[1]
    assert lines[2] == "ACRN_IOCTL_SET_IRQLINE(0x3) = 0"
    m.close()


def test_trace_is_silent_unless_enabled(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("acrn.trace").setLevel(logging.WARNING)
    try:
        with EmulatedDevice(Machine()) as dev, pytest.raises(OSError):
            dev.ioctl(uapi.ACRN_IOCTL_START_VM, 0)
    finally:
        logging.getLogger("acrn.trace").setLevel(logging.NOTSET)
    assert not [r for r in caplog.records if r.name == "acrn.trace"]
