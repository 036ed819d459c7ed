"""acrn-dm v3.3 boots the Debian kernel and its busybox initramfs to init on pyacrn (``slow``).

Each run goes the whole way through the kernel (about 10 minutes on the development machines'
KVM; README.md, "Run ACRN's acrn-dm on pyacrn", gives the times measured) with the boot tests'
init command line, through ``acrn -v exec``:

* **virtio-blk**: ``-s 3,virtio-blk,disk.img``, an ext4 image made without root (``mkfs.ext4 -d``)
  holding a file with a known line; the virtio initramfs (``scripts/fetch-linux-guest.py``) loads
  virtio, virtio_ring, virtio_pci* and virtio_blk, mounts ``/dev/vda`` read-only and prints the
  file, then powers off: acrn-dm exits 0 by itself.
* **in-place reset**: ``reboot=warm,pci rgexit=reboot``.  Linux's ``reboot=pci`` writes 0x02 and
  then 0x0E to port 0xCF9 for a cold reboot, 0x06 for a warm one (``arch/x86/kernel/reboot.c:
  native_machine_emergency_restart``, BOOT_CF9_FORCE); acrn-dm takes bit 3 (0x0E) as its *full*
  reset (a new CREATE_VM) and bit 2 alone (0x06) as its in-place *system* reset
  (``devicemodel/arch/x86/pm.c: reset_handler``; ``core/main.c: vm_system_reset``; docs/acrn-dm.md,
  "Guest reboot"), so the warm one is what reaches the PAUSE_VM, CLEAR_VM_IOREQ, RESET_VM,
  SET_VCPU_REGS, START_VM path.  The kernel must print its banner a second time, and the service's
  trace must show that sequence between the two boots and no second CREATE_VM.
* **full reset**: plain ``rgexit=reboot``, the kernel's default reboot through the FADT's reset
  register (0x0E on 0xCF9): acrn-dm destroys the VM and creates it again in the same process.
* **shell**: a command typed on acrn-dm's stdio console is answered, and ``poweroff -f`` ends
  acrn-dm with status 0.

All run on ``--cpu_affinity 1``, as ACRN's launch scripts do: acrn-dm writes the *host's* LAPIC
ID of that pCPU into the guest's MADT (``hw/platform/acpi/acpi.c: basl_fwrite_madt``), and the
emulated board gives the vCPU its pCPU's LAPIC ID (ACRN's ``vlapic.c: vlapic_init``), numbering
LAPICs by pCPU id.  The two agree where the host's pCPU 1 has LAPIC ID 1; elsewhere Linux would
stop in ``setup_local_APIC`` (``BUG_ON(!apic->apic_id_registered())``), so the tests skip.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.kvm, pytest.mark.soft, pytest.mark.boot]

#: Seconds for a whole run (README.md, "Run ACRN's acrn-dm on pyacrn", gives the measured times).
BOUND = 3600.0
#: The boot tests' init command line (tests/boot/test_boot_linux.py: INIT_CMDLINE).
BOOTARGS = (
    "console=ttyS0 earlyprintk=serial,ttyS0 nokaslr noxsave "
    "panic=-1 cryptomgr.notests clearcpuid=129,137,147,148,151,153,308"
)


def tsc_args() -> str:
    """``tsc_early_khz=<host TSC> tsc=reliable`` where the host's TSC rate is known, else nothing.

    The kernel cannot calibrate its TSC under acrn-dm here: its PIT answers through ioreqs, far too
    slowly for the PIT loop, and the HPET is not mapped yet (``tsc: Unable to calibrate against
    PIT``, ``Marking TSC unstable``), so HPET becomes the clocksource and every clock read is an
    ioreq round trip to acrn-dm (about 1,700 a second on this machine's boots). KVM gives the guest
    the host's TSC rate; ``arch/x86/kernel/tsc.c: determine_cpu_tsc_frequencies`` takes it from
    ``tsc_early_khz``.
    """
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = re.search(r"^flags\s*:(.*)$", info, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", info, re.M)
    if not flags or not mhz or "constant_tsc" not in flags.group(1).split():
        return ""
    return f" tsc_early_khz={int(float(mhz.group(1)) * 1000)} tsc=reliable"


DISK_LINE = "pyacrn virtio-blk: the guest read this line from /dev/vda"
BANNER = b"Linux version"
#: The pCPU the guest runs on; the emulated board's LAPIC ID of pCPU n is n (see the module doc).
PCPU = 1


def host_lapic_ids() -> list[int]:
    """The APIC IDs of the host MADT's enabled processor LAPIC entries, in order (acrn-dm's pCPU ids;
    ``hw/platform/acpi/acpi_parser.c: parse_madt``)."""
    data = Path("/sys/firmware/acpi/tables/APIC").read_bytes()
    ids, pos = [], 44
    while pos + 2 <= len(data) and data[pos + 1] >= 2:
        kind, length = data[pos], data[pos + 1]
        if kind == 0 and int.from_bytes(data[pos + 4 : pos + 8], "little") & 1:
            ids.append(data[pos + 3])
        pos += length
    return ids


@pytest.fixture
def lapic_ids_agree(host_madt_readable: None) -> None:
    ids = host_lapic_ids()
    if len(ids) <= PCPU or ids[PCPU] != PCPU:
        pytest.skip(
            f"host pCPU {PCPU} has LAPIC ID {ids[PCPU] if len(ids) > PCPU else None}; the emulated "
            f"board's is {PCPU}, and acrn-dm's MADT would disagree with the vCPU's APIC ID"
        )


class Run:
    def __init__(self, out: bytes, trace: str, returncode: int, seconds: float, interrupted: bool) -> None:
        self.out = out
        self.console = out.decode(errors="replace")
        self.trace = trace
        self.returncode = returncode
        self.seconds = seconds
        self.interrupted = interrupted

    def last(self, n: int = 6000) -> str:
        return (
            f"after {self.seconds:.0f} s, rc {self.returncode}; the guest printed last (acrn-dm's own"
            f" buffered stdout comes at its exit):\n{self.console[-n:]}"
        )


def run_acrn_dm(
    acrn_dm: Path,
    dm_args: list[str],
    bootargs: str,
    tmp_path: Path,
    until: Callable[[bytes], bool],
    feed: Callable[[bytes], bytes] | None = None,
) -> Run:
    """``acrn -v exec --hybrid`` acrn-dm until it exits, ``until(stdout)`` holds or BOUND passes
    (then Ctrl-C, as in test_acrndm_boot.py); the trace and the console are kept in ``tmp_path``.
    ``feed(stdout)`` returns what to type on acrn-dm's stdio console now (b"" for nothing); acrn-dm
    reads its stdio console only from a terminal (``hw/uart_core.c: uart_config_backend`` adds
    stdin to its event loop only if ``isatty``), so the keys go through a pseudo-terminal."""
    cmd = [
        sys.executable, "-m", "acrn", "-v", "exec", "--hybrid", "--reserve-hugepages", "--",
        str(acrn_dm), "-m", "256M", "-s", "0:0,hostbridge", "-s", "1:0,lpc", *dm_args,
        "-l", "com1,stdio", "--cpu_affinity", str(PCPU), "-B", bootargs, "vm1",
    ]  # fmt: skip
    err_path = tmp_path / "trace.log"
    t0 = time.monotonic()
    interrupted = False
    # The console goes to console.log as it comes, to follow a run of many minutes (tail -f).
    with open(err_path, "wb") as err, open(tmp_path / "console.log", "wb") as console:
        master, slave = os.openpty() if feed else (-1, -1)
        p = subprocess.Popen(
            cmd,
            stdin=slave if feed else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
        out = b""
        try:
            assert p.stdout is not None
            sel = selectors.DefaultSelector()
            sel.register(p.stdout, selectors.EVENT_READ)
            deadline = t0 + BOUND
            while time.monotonic() < deadline and not until(out):
                if sel.select(1):
                    chunk = os.read(p.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    out += chunk
                    console.write(chunk)
                    console.flush()
                typed = feed(out) if feed else b""
                if typed:
                    with contextlib.suppress(OSError):
                        os.write(master, typed)
            if not until(out) and time.monotonic() < deadline:
                # stdout closed: acrn-dm is on its way out (the guest powered off).
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=60)
            if p.poll() is None:
                interrupted = True
                os.killpg(p.pid, signal.SIGINT)
            rest, _ = p.communicate(timeout=120)
            out += rest
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            for fd in (master, slave):
                if fd >= 0:
                    os.close(fd)
    run = Run(out, err_path.read_text(errors="replace"), p.returncode, time.monotonic() - t0, interrupted)
    print(f"acrn-dm run: {run.seconds:.1f} s, rc {run.returncode}, interrupted {interrupted}")
    return run


def ioctl_names(trace: str) -> list[str]:
    """The service's decoded ioctls in order, without the ATTACH/NOTIFY of every request."""
    names = re.findall(r"\] (ACRN_IOCTL_\w+|0x[0-9a-f]{8})\(", trace)
    return [
        n for n in names if n not in ("ACRN_IOCTL_ATTACH_IOREQ_CLIENT", "ACRN_IOCTL_NOTIFY_REQUEST_FINISH")
    ]


def make_disk(tmp_path: Path) -> Path:
    """A 8 MiB ext4 image with ``guest-disk.txt`` (``mkfs.ext4 -d``: no root, no loop device)."""
    mkfs = shutil.which("mkfs.ext4") or next(
        (p for p in ("/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4") if os.access(p, os.X_OK)), None
    )
    if mkfs is None:
        pytest.skip("mkfs.ext4 (e2fsprogs) is not installed: no disk image for virtio-blk")
    root = tmp_path / "diskroot"
    root.mkdir()
    (root / "guest-disk.txt").write_text(DISK_LINE + "\n")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    done = subprocess.run([mkfs, "-q", "-F", "-d", str(root), str(image)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mkfs.ext4 -d failed (e2fsprogs older than 1.43?): {done.stderr.strip()}")
    return image


def test_acrn_dm_virtio_blk_disk_is_read_by_the_guest(
    acrn_dm: Path,
    lapic_ids_agree: None,
    linux_guest: Path,
    linux_guest_virtio: Path,
    huge_pages: None,
    tmp_path: Path,
) -> None:
    image = make_disk(tmp_path)
    args = ["-s", f"3,virtio-blk,{image}", "-k", str(linux_guest / "vmlinuz"), "-r", str(linux_guest_virtio)]
    run = run_acrn_dm(acrn_dm, args, BOOTARGS + tsc_args(), tmp_path, lambda out: False)
    assert "GUEST-INIT-OK" in run.console, run.last()
    for module in ("virtio", "virtio_ring", "virtio_pci", "virtio_blk"):
        assert f"GUEST-INSMOD {module}\r\n" in run.console or f"GUEST-INSMOD {module}\n" in run.console, (
            run.last()
        )
    assert "vda" in run.console, run.last()  # virtio_blk's "[vda] 16384 512-byte logical blocks"
    text = run.console.replace("\r\n", "\n")
    assert f"GUEST-DISK-BEGIN\n{DISK_LINE}\nGUEST-DISK-END\n" in text, run.last()
    # poweroff -f: ACPI S5 on acrn-dm's PM1A_CNT, acrn-dm tears the VM down and exits 0 by itself.
    assert not run.interrupted and run.returncode == 0, run.last() + "\n--- trace ---\n" + run.trace[-3000:]
    names = ioctl_names(run.trace)
    assert names.count("ACRN_IOCTL_CREATE_VM") == 1 and names[-1] == "ACRN_IOCTL_DESTROY_VM"
    print(f"virtio-blk: the guest printed the disk's line after {run.seconds:.0f} s")


#: Ioctls between two boots that are not the reset itself: the first boot's interrupts and the
#: ACPI tables built again (six PM_GET_CPU_STATE for the DSDT).
REBOOT_NOISE = ("ACRN_IOCTL_PM_GET_CPU_STATE", "ACRN_IOCTL_SET_IRQLINE", "ACRN_IOCTL_INJECT_MSI")


def reboot(acrn_dm: Path, linux_guest: Path, tmp_path: Path, bootargs: str) -> tuple[list[str], list[str]]:
    """Boot to init, which reboots the guest (``rgexit=reboot``: busybox ``reboot -f``), and stop
    at the second banner: every ioctl of the run, and the reset's own between the two START_VMs."""
    args = ["-k", str(linux_guest / "vmlinuz"), "-r", str(linux_guest / "initramfs.cpio")]
    run = run_acrn_dm(
        acrn_dm, args, f"{BOOTARGS}{tsc_args()} {bootargs}", tmp_path, lambda out: out.count(BANNER) >= 2
    )
    assert "GUEST-INIT-OK" in run.console, run.last()
    assert run.out.count(BANNER) >= 2, f"no second boot: {run.last()}"
    assert run.returncode == 0, run.last() + "\n--- trace ---\n" + run.trace[-3000:]
    names = ioctl_names(run.trace)
    return names, reset_between_boots(names)


def reset_between_boots(names: list[str]) -> list[str]:
    """The ioctls after the first START_VM up to the second, without :data:`REBOOT_NOISE`."""
    first = names.index("ACRN_IOCTL_START_VM")
    second = names.index("ACRN_IOCTL_START_VM", first + 1)
    return [n for n in names[first + 1 : second + 1] if n not in REBOOT_NOISE]


def test_acrn_dm_system_reset_reboots_the_guest_in_place(
    acrn_dm: Path, lapic_ids_agree: None, linux_guest: Path, huge_pages: None, tmp_path: Path
) -> None:
    names, reset = reboot(acrn_dm, linux_guest, tmp_path, "reboot=warm,pci rgexit=reboot")
    # One VM for both boots: acrn-dm's system reset keeps the fd, the memfds and the vmid.
    assert names.count("ACRN_IOCTL_CREATE_VM") == 1, names
    # core/main.c: vm_system_reset -- PAUSE_VM, CLEAR_VM_IOREQ, the devices' reset (the ACPI tables
    # again), RESET_VM, the loader, SET_VCPU_REGS (add_cpu's BSP state again), START_VM.
    assert reset == [
        "ACRN_IOCTL_PAUSE_VM", "ACRN_IOCTL_CLEAR_VM_IOREQ", "ACRN_IOCTL_RESET_VM",
        "ACRN_IOCTL_SET_VCPU_REGS", "ACRN_IOCTL_START_VM",
    ], reset  # fmt: skip


def test_acrn_dm_full_reset_reboots_the_guest_in_a_new_vm(
    acrn_dm: Path, lapic_ids_agree: None, linux_guest: Path, huge_pages: None, tmp_path: Path
) -> None:
    """``reboot -f`` with the kernel's default reboot: ACPI's reset register, which acrn-dm's FADT
    gives as 0x0E on port 0xCF9 (``hw/platform/acpi/acpi.c: basl_fwrite_fadt``). Bit 3 is acrn-dm's
    full reset: its VM loop ends, ``main`` pauses and destroys the VM and goes round its loop again
    with a new CREATE_VM (``core/main.c: main``), in the same process."""
    names, reset = reboot(acrn_dm, linux_guest, tmp_path, "rgexit=reboot")
    assert names.count("ACRN_IOCTL_CREATE_VM") == 2, names
    # main: vm_pause, vm_deinit_vdevs (the ioreq client), vm_destroy; then all of the start-up
    # again: vm_create, vm_init_asyncio (SETUP_ASYNCIO, 0xa290, which an upstream HSM refuses),
    # vm_setup_memory, vm_event_init (SETUP_VM_EVENT_RING, 0xa2a0, refused too), acpi_build,
    # acrn_sw_load and add_cpu, the ioreq client, START_VM (docs/acrn-dm.md, section 2.1).
    assert reset == [
        "ACRN_IOCTL_PAUSE_VM", "ACRN_IOCTL_DESTROY_IOREQ_CLIENT", "ACRN_IOCTL_DESTROY_VM",
        "ACRN_IOCTL_CREATE_VM", "0x4008a290", "ACRN_IOCTL_SET_MEMSEG", "0x4008a2a0",
        "ACRN_IOCTL_SET_VCPU_REGS", "ACRN_IOCTL_CREATE_IOREQ_CLIENT", "ACRN_IOCTL_START_VM",
    ], reset  # fmt: skip


def test_acrn_dm_console_runs_a_shell_command_and_the_guest_powers_off(
    acrn_dm: Path, lapic_ids_agree: None, linux_guest: Path, huge_pages: None, tmp_path: Path
) -> None:
    """The busybox shell on acrn-dm's stdio COM1 answers a command typed there; ``poweroff -f``
    (ACPI S5 on acrn-dm's PM1A control port) makes acrn-dm tear the VM down and exit 0."""
    args = ["-k", str(linux_guest / "vmlinuz"), "-r", str(linux_guest / "initramfs.cpio")]
    typed: list[str] = []

    def feed(out: bytes) -> bytes:
        if b"GUEST-INIT-OK" in out and "command" not in typed:
            typed.append("command")
            return b"echo SHELL-$((6*7))\r"  # Enter on a raw terminal
        if b"SHELL-42" in out and "poweroff" not in typed:
            typed.append("poweroff")
            return b"busybox poweroff -f\r"
        return b""

    run = run_acrn_dm(
        acrn_dm, args, f"{BOOTARGS}{tsc_args()} rgexit=shell", tmp_path, lambda out: False, feed
    )
    assert "GUEST-INIT-OK" in run.console, run.last()
    assert "SHELL-42" in run.console, run.last()  # $((6*7)) evaluated by the guest's shell
    assert not run.interrupted and run.returncode == 0, run.last() + "\n--- trace ---\n" + run.trace[-3000:]
    names = ioctl_names(run.trace)
    assert names.count("ACRN_IOCTL_CREATE_VM") == 1 and names[-1] == "ACRN_IOCTL_DESTROY_VM"
    print(f"shell: answered and powered off after {run.seconds:.0f} s")
