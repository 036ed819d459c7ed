"""The hypervisor service from Python: protocol layout, the ServiceDevice transport, pyacrn's own
device model on the service, its kernel transport under ``acrn exec``, and ``acrn ps``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from acrn import uapi
from acrn.service import protocol
from acrn.service.server import HvService, ServiceError, _changed_prefix, default_socket_path
from cprobe import CProbe

SERVICE_DIR = Path(__file__).resolve().parents[2] / "src" / "acrn" / "service"
ACRN = [sys.executable, "-m", "acrn"]

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def _preload_built() -> bool:
    from acrn.service.client import PreloadMissing, preload_library

    try:
        preload_library()
    except PreloadMissing:
        return False
    return True


needs_preload = pytest.mark.skipif(
    not _preload_built(), reason="the preload library was not built (no gcc at install)"
)


@pytest.fixture
def service(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[HvService]:
    """An in-process service on a temporary socket, with the accelerator the test's marker names."""
    from acrn.emu.machine import Machine

    accel = "soft" if request.node.get_closest_marker("soft") else "kvm"
    machine = Machine(accel=accel)
    svc = HvService(machine, str(tmp_path / "hv.sock"))
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()
        machine.runtime.close()


def _eventually(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ---------------------------------------------------------------------------- the wire format
@needs_gcc
def test_protocol_py_equals_protocol_h(tmp_path: Path) -> None:
    probe = CProbe("stdint.h", str(SERVICE_DIR / "protocol.h"))
    for st in (protocol.acrn_svc_hello, protocol.acrn_svc_hello_reply, protocol.acrn_svc_ctl,
               protocol.acrn_svc_channel_hello, protocol.acrn_svc_mem, protocol.acrn_svc_req,
               protocol.acrn_svc_rep):  # fmt: skip
        probe.struct(st)
    consts = {
        "ACRN_SVC_VERSION": protocol.VERSION, "ACRN_SVC_HELLO_MAGIC": protocol.HELLO_MAGIC,
        "ACRN_SVC_REQ_MAGIC": protocol.REQ_MAGIC, "ACRN_SVC_REP_MAGIC": protocol.REP_MAGIC,
        "ACRN_SVC_CTL_MAGIC": protocol.CTL_MAGIC, "ACRN_SVC_OPEN": protocol.OPEN,
        "ACRN_SVC_STATUS": protocol.STATUS, "ACRN_SVC_CTL_CHANNEL": protocol.CTL_CHANNEL,
        "ACRN_SVC_CTL_CANCEL": protocol.CTL_CANCEL, "ACRN_SVC_ARG_BUF": protocol.ARG_BUF,
        "ACRN_SVC_ARG_SHORT": protocol.ARG_SHORT, "ACRN_SVC_ARG_RO": protocol.ARG_RO,
        "ACRN_SVC_ADDR_FAULT": protocol.ADDR_FAULT, "ACRN_SVC_FD_SENT": protocol.FD_SENT,
        "ACRN_SVC_FD_BAD": protocol.FD_BAD, "ACRN_SVC_MAX_ARG": protocol.MAX_ARG,
        "ACRN_SVC_MAX_MEM": protocol.MAX_MEM, "ACRN_SVC_MAX_FDS": protocol.MAX_FDS,
    }  # fmt: skip
    for name, value in consts.items():
        probe.emit(f"const.{name}", name, value)
    got = probe.run(tmp_path)
    assert probe.mismatches(got) == {}


def test_preload_knows_every_acrn_ioctl_by_its_number() -> None:
    """The library's table of the 27 ioctls (kind of argument, embedded address) names each
    ioctl with the number acrn.uapi (proven equal to <linux/acrn.h>) gives it."""
    src = (SERVICE_DIR / "preload.c").read_text()
    table = dict(re.findall(r'\{0x([0-9A-F]{8})u, A_\w+, E_\w+, "(ACRN_IOCTL_\w+)"\}', src))
    assert {name: int(num, 16) for num, name in table.items()} == dict(uapi.IOCTLS)


def test_parse_req_rejects_lying_lengths() -> None:
    req = protocol.acrn_svc_req(protocol.REQ_MAGIC, uapi.ACRN_IOCTL_START_VM, 0, 1, 4, 0, 0, -1)
    with pytest.raises(protocol.ProtocolError, match="header says"):
        protocol.parse_req(bytes(req))  # claims 4 argument bytes, carries none
    with pytest.raises(protocol.ProtocolError, match="shorter than its header"):
        protocol.parse_req(b"\0" * 8)
    bad = protocol.acrn_svc_req(0x1234, 0, 0, 1, 0, 0, 0, -1)
    with pytest.raises(protocol.ProtocolError, match="magic"):
        protocol.parse_req(bytes(bad))
    ok = protocol.acrn_svc_req(protocol.REQ_MAGIC, uapi.ACRN_IOCTL_START_VM, 7, 1, 2, 0, 0, -1)
    hdr, mems, arg = protocol.parse_req(bytes(ok) + b"ab")
    assert (hdr.value, mems, arg) == (7, [], b"ab")


def test_changed_prefix_is_what_the_kernel_wrote() -> None:
    assert _changed_prefix(b"\0" * 8, b"\0" * 8) == b""
    assert _changed_prefix(b"\0\0\0\0", b"\1\0\2\0") == b"\1\0\2"


def test_default_socket_path_prefers_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ACRN_HV_SOCKET", "/somewhere/hv.sock")
    assert default_socket_path() == "/somewhere/hv.sock"
    monkeypatch.delenv("ACRN_HV_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_socket_path() == str(tmp_path / "pyacrn-hv.sock")


# ---------------------------------------------------------------------------- start-up rules
def test_service_socket_is_private_and_removed_at_stop(tmp_path: Path) -> None:
    from acrn.emu.machine import Machine

    path = tmp_path / "hv.sock"
    with HvService(Machine(accel="soft"), str(path)) as svc:
        assert (path.stat().st_mode & 0o777) == 0o600
        second = HvService(Machine(accel="soft"), str(path))
        with pytest.raises(ServiceError, match="already listens"):
            second.start()
        assert svc.status()["vms"] == []
    assert not path.exists()


def test_service_replaces_a_stale_socket_and_refuses_other_files(tmp_path: Path) -> None:
    import socket

    from acrn.emu.machine import Machine

    path = tmp_path / "hv.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a service that died
    with HvService(Machine(accel="soft"), str(path)):
        assert path.exists()
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(ServiceError, match="not a socket"):
        HvService(Machine(accel="soft"), str(regular)).start()
    assert regular.read_text() == "x"
    with pytest.raises(ServiceError, match="does not exist"):
        HvService(Machine(accel="soft"), str(tmp_path / "no" / "hv.sock")).start()


# ---------------------------------------------------------------------------- Python clients
def _run_demo_guest(device: object, name: str) -> tuple[str, bytes]:
    from acrn.dm.vmm import VmSession
    from acrn.guests import GUESTS

    guest = GUESTS[name]
    expected = (guest.expected_output or "").encode()
    sessions: list[VmSession] = []
    seen = bytearray()

    def console(data: bytes) -> None:
        seen.extend(data)
        if sessions and seen == expected:
            sessions[0].request_stop("marker", 0, "expected output")

    with VmSession(name=name[:15], mem_size=guest.mem_size, device=device, console=console) as session:  # type: ignore[arg-type]
        sessions.append(session)
        assert session.control is None  # the service is another transport, not the emulator in-process
        session.load(guest.load_gpa, guest.image())
        session.set_regs(guest.regs())
        result = session.run(timeout=60)
    return result.reason, result.output


@needs_preload
@pytest.mark.parametrize("guest", ["hello_real", "hello_protected", "hello_long"])
@pytest.mark.parametrize(
    "accel", [pytest.param("kvm", marks=pytest.mark.kvm), pytest.param("soft", marks=pytest.mark.soft)]
)
def test_pyacrn_device_model_runs_on_the_service(tmp_path: Path, guest: str, accel: str) -> None:
    """pyacrn's device model through ServiceDevice: guest RAM (private Python memory) is turned into a
    shared mapping in place, the ioreq page too, and the guest's UART output arrives."""
    from acrn.emu.machine import Machine
    from acrn.guests import GUESTS
    from acrn.service.client import ServiceDevice

    machine = Machine(accel=accel)
    with HvService(machine, str(tmp_path / "hv.sock")) as svc:
        dev = ServiceDevice(svc.path)
        reason, output = _run_demo_guest(dev, guest)
        assert (reason, output.decode()) == ("marker", GUESTS[guest].expected_output)
        assert svc.status()["vms"] == []  # the session destroyed its VM
    machine.runtime.close()


@needs_preload
@pytest.mark.soft
def test_hsm_open_reaches_the_service_by_argument_and_environment(
    service: HvService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from acrn.errors import HsmError
    from acrn.hsm import Hsm

    with Hsm.open("service", socket=service.path) as a:
        assert a.kind == "service"
        vm = a.create_vm("shared-name")
        monkeypatch.setenv("ACRN_HV_SOCKET", service.path)
        with (
            Hsm.open() as b,
            Hsm.open() as c,
        ):  # auto: no /dev/acrn_hsm here, the environment names the service
            assert b.kind == "service"
            other = b.create_vm("other-name")
            assert other.vmid != vm.vmid  # vmids are the one hypervisor's
            names = {v["name"]: v for v in service.status()["vms"]}
            assert set(names) == {"shared-name", "other-name"}
            assert names["shared-name"]["pid"] == os.getpid()
            assert names["other-name"]["state"] == "CREATED"
            # The name another open file holds is taken: hcall_create_vm finds that slot by name,
            # it is not POWERED_OFF -> -1, and the HSM turns every failure into EINVAL.
            with pytest.raises(HsmError) as e:
                c.create_vm("shared-name")
            assert e.value.errno == 22
            # ACRN's quirk, reproduced: that failure cleared the live VM's slot name
            # (hypervisor/common/hypercall.c: hcall_create_vm clears a dynamic slot's name on any
            # failure), so get_unused_vmid now offers that slot to a new name, which fails too.
            with pytest.raises(HsmError) as e:
                c.create_vm("third-name")
            assert e.value.errno == 22
    # Closing the fds released both VMs: the service sees the connection's EOF a moment later.
    assert _eventually(lambda: service.status()["vms"] == [])


@needs_preload
@pytest.mark.soft
def test_acrn_ps_lists_the_service_vms(service: HvService) -> None:
    from acrn.hsm import Hsm

    with Hsm.open("service", socket=service.path) as h:
        vm = h.create_vm("ps-check")
        ram = vm.map_ram(0, 2 << 20)
        assert ram.size == 2 << 20
        table = subprocess.run(
            [*ACRN, "ps", "--hv", service.path], capture_output=True, text=True, timeout=60
        )
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()
        assert header.split() == ["VMID", "NAME", "STATE", "VCPUS", "MEMORY", "ACCEL", "PID", "UPTIME"]
        assert row.split()[:7] == [
            str(vm.vmid),
            "ps-check",
            "CREATED",
            str(vm.vcpu_num),
            "2M",
            "soft",
            str(os.getpid()),
        ]
        js = subprocess.run(
            [*ACRN, "ps", "--hv", service.path, "--json"], capture_output=True, text=True, timeout=60
        )
        data = json.loads(js.stdout)
        assert [v["name"] for v in data["vms"]] == ["ps-check"]
        assert data["vms"][0]["memory"] == 2 << 20


def test_acrn_ps_without_a_service_says_so(tmp_path: Path) -> None:
    r = subprocess.run(
        [*ACRN, "ps", "--hv", str(tmp_path / "none.sock")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "no pyacrn hypervisor service answers" in r.stderr
    assert "Traceback" not in r.stderr


@needs_preload
@pytest.mark.kvm
def test_kernel_transport_runs_under_acrn_exec() -> None:
    """The code meant for ACRN hardware (KernelDevice: os.open and fcntl.ioctl on /dev/acrn_hsm),
    exercised for real: under acrn exec the device exists and leads to a private service."""
    r = subprocess.run([*ACRN, "exec", "--", *ACRN, "demo", "--device", "kernel", "--timeout", "60"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split("]")[1].strip() for line in lines] == [
        "hello from real mode", "hello from protected mode", "hello from long mode"]  # fmt: skip
    assert all(" on kernel," in line for line in lines)


@needs_preload
@pytest.mark.soft
def test_acrn_run_and_demo_take_the_service_with_hv(service: HvService) -> None:
    """pyacrn's device model beside other clients' VMs: --hv SOCKET opens the service's HSM."""
    r = subprocess.run(
        [*ACRN, "demo", "--hv", service.path, "hello_long"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "on service" in r.stdout and "hello from long mode" in r.stdout
    r = subprocess.run(
        [*ACRN, "run", "--hv", service.path, "--guest", "hello_real", "--stop-at", "real mode", "--timeout", "60"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "hello from real mode" in r.stdout
    bad = subprocess.run([*ACRN, "run", "--hv", service.path, "--accel", "kvm", "--guest", "hello_real"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "service's own options" in bad.stderr and "Traceback" not in bad.stderr


@needs_preload
@pytest.mark.soft
def test_one_process_reaches_more_services_than_the_library_tracks_at_once(tmp_path: Path) -> None:
    """The library recognises HSM fds by their peer's path and keeps a table of service paths;
    services that are gone give their place to new ones (a test session starts hundreds)."""
    from acrn.emu.machine import Machine
    from acrn.hsm import Hsm

    machine = Machine(accel="soft")
    for i in range(80):
        path = tmp_path / f"hv{i}.sock"
        with HvService(machine, str(path)) as svc, Hsm.open("service", socket=svc.path) as h:
            h.create_vm(f"svc{i}")
    machine.runtime.close()
