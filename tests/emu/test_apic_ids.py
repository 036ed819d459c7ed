"""A vCPU's local APIC ID is its pCPU's LAPIC ID, in every VM (ACRN v3.3
``hypervisor/arch/x86/guest/vlapic.c: vlapic_init``: "Set vLAPIC ID to be same as pLAPIC ID").

acrn-dm writes those IDs into the guest's MADT (``hw/platform/acpi/acpi.c: basl_fwrite_madt``);
a Linux guest whose APIC ID register disagrees with its MADT stops in ``setup_local_APIC``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from acrn.device import EmulatedDevice
from acrn.dm.vmm import VmSession
from acrn.emu.accel.kvm import build_guest_cpuid
from acrn.emu.machine import Machine
from acrn.guests import GUESTS, SMP_HELLO_OUTPUT
from acrn.hsm import Hsm


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = Machine(accel="kvm")
    yield m
    m.runtime.close()


@pytest.mark.parametrize(("affinity", "ids"), [(0b0010, [1]), (0b1100, [2, 3]), (0b1110, [1, 2, 3])])
def test_vlapic_id_is_the_pcpus_lapic_id(machine: Machine, affinity: int, ids: list[int]) -> None:
    with Hsm(EmulatedDevice(machine)) as h:
        vm = h.create_vm("apic-ids", cpu_affinity=affinity)
        hv_vm = machine.hv.vm(vm.vmid)
        assert hv_vm is not None
        assert [v.lapic_id for v in hv_vm.vcpus] == ids
        assert [v.pcpu_id for v in hv_vm.vcpus] == ids


def test_the_service_vm_too_has_its_pcpus_lapic_ids(machine: Machine) -> None:
    assert [v.lapic_id for v in machine.hv.service_vm.vcpus] == [0, 1, 2, 3]


def test_cpuid_reports_the_apic_id_as_the_initial_apic_id() -> None:
    supported = [(1, 0, 0, 0, 0x00010800, 0, 0), (0xB, 0, 1, 0, 0, 0, 0)]
    entries = build_guest_cpuid(supported, vcpu_id=3, tsc_khz=0)
    leaf1 = next(e for e in entries if e[0] == 1)
    leaf_b = next(e for e in entries if e[0] == 0xB)
    assert leaf1[4] >> 24 == 3  # leaf 1 EBX[31:24]: initial APIC ID
    assert leaf_b[6] == 3  # leaf 0xB EDX: x2APIC ID


@pytest.mark.kvm
@pytest.mark.parametrize("affinity", [0b0110, 0b1100])
def test_an_ap_is_reached_by_its_pcpus_apic_id(machine: Machine, affinity: int) -> None:
    """smp_hello's BSP sends INIT/SIPI to the APIC ID after its own: on pCPUs 2 and 3 that is 3,
    which only reaches the AP if KVM numbers the local APICs as ACRN does."""
    gst = GUESTS["smp_hello"]
    with VmSession(
        mem_size=gst.mem_size, device=EmulatedDevice(machine), accel="kvm", cpu_affinity=affinity
    ) as s:
        s.load(gst.load_gpa, gst.image())
        s.set_regs(gst.regs())
        result = s.run(timeout=60)
    assert result.reason == "halt", result.summary()
    assert result.output.decode() == SMP_HELLO_OUTPUT.format(rbx=0)
