"""ACRN's own device model, acrn-dm v3.3, unmodified, boots Linux on pyacrn through ``acrn exec``.

acrn-dm opens /dev/acrn_hsm (the preload library makes it exist), backs guest RAM with a hugetlb
memfd that the service maps shared, loads the Debian cloud bzImage with its own loader, sends its
own SET_VCPU_REGS, and serves its COM1 on stdio through its own ioreq loop.  Ctrl-C (SIGINT to the
foreground process group) makes acrn-dm tear the VM down as on ACRN and exit 0.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kvm, pytest.mark.soft, pytest.mark.boot]

BOUND = 240.0  # seconds to the banner; about 16 s alone on the development machines


def _ioctl_names(trace: str) -> list[str]:
    """The ioctls in the service's trace, in order, ATTACH/NOTIFY runs collapsed to one each."""
    names = re.findall(r"\] (ACRN_IOCTL_\w+|0x[0-9a-f]{8})\(", trace)
    out: list[str] = []
    for n in names:
        if n in ("ACRN_IOCTL_ATTACH_IOREQ_CLIENT", "ACRN_IOCTL_NOTIFY_REQUEST_FINISH") and n in out[-2:]:
            continue
        out.append(n)
    return out


def test_acrn_dm_boots_linux_to_its_banner_and_ends_on_ctrl_c(
    acrn_dm: Path, host_madt_readable: None, linux_guest: Path, huge_pages: None, tmp_path: Path
) -> None:
    cmd = [
        sys.executable, "-m", "acrn", "-v", "exec", "--hybrid", "--reserve-hugepages", "--",
        str(acrn_dm), "-m", "256M", "-s", "0:0,hostbridge", "-s", "1:0,lpc", "-l", "com1,stdio",
        "--cpu_affinity", "1", "-k", str(linux_guest / "vmlinuz"),
        "-B", "console=ttyS0 earlyprintk=serial,ttyS0 nokaslr noxsave", "vm1",
    ]  # fmt: skip
    err_path = tmp_path / "trace.log"
    with open(err_path, "wb") as err:
        p = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, start_new_session=True
        )
        out = b""
        try:
            assert p.stdout is not None
            sel = selectors.DefaultSelector()
            sel.register(p.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + BOUND
            while b"Linux version" not in out and time.monotonic() < deadline and p.poll() is None:
                if sel.select(1):
                    chunk = os.read(p.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    out += chunk
            # Ctrl-C: the terminal signals the foreground group; acrn exec passes it by, acrn-dm
            # pauses, destroys its ioreq client and its VM, and exits 0.
            os.killpg(p.pid, signal.SIGINT)
            rest, _ = p.communicate(timeout=120)
            out += rest
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    trace = err_path.read_text(errors="replace")
    assert b"Linux version" in out, f"no banner within {BOUND:.0f} s; acrn-dm printed: {out[-2000:]!r}"
    assert p.returncode == 0, trace[-3000:]
    names = _ioctl_names(trace)
    # acrn-dm's start-up order (devicemodel/core/main.c: main, vm_init_vdevs, add_cpu; vmmapi.c;
    # docs/acrn-dm.md): CREATE_VM, its ACRN-kernel-only SETUP_ASYNCIO (ENOTTY from an upstream HSM,
    # a warning for acrn-dm), guest RAM, SETUP_VM_EVENT_RING (ENOTTY too), the C-state queries of
    # its ACPI builder, the BSP's registers, then the loop thread's CREATE_IOREQ_CLIENT, START_VM
    # and ATTACH/NOTIFY.
    start = names.index("ACRN_IOCTL_START_VM")
    assert names[0] == "ACRN_IOCTL_CREATE_VM"
    assert names[1] == "0x4008a290" and "0x4008a290(" in trace and "= -1 ENOTTY" in trace
    assert names[2] == "ACRN_IOCTL_SET_MEMSEG"
    assert names[3] == "0x4008a2a0"
    assert set(names[4 : start - 2]) == {"ACRN_IOCTL_PM_GET_CPU_STATE"}
    assert names[start - 2 : start + 2] == [
        "ACRN_IOCTL_SET_VCPU_REGS", "ACRN_IOCTL_CREATE_IOREQ_CLIENT", "ACRN_IOCTL_START_VM",
        "ACRN_IOCTL_ATTACH_IOREQ_CLIENT",
    ]  # fmt: skip
    # Teardown (main.c: main after the event loop): PAUSE, DESTROY_IOREQ_CLIENT, PAUSE, DESTROY_VM.
    tail = [
        n
        for n in names[start:]
        if n not in ("ACRN_IOCTL_ATTACH_IOREQ_CLIENT", "ACRN_IOCTL_NOTIFY_REQUEST_FINISH")
    ]
    assert tail[-4:] == [
        "ACRN_IOCTL_PAUSE_VM", "ACRN_IOCTL_DESTROY_IOREQ_CLIENT", "ACRN_IOCTL_PAUSE_VM", "ACRN_IOCTL_DESTROY_VM",
    ]  # fmt: skip
    assert "HSM file released" in trace
