"""``drivers/virt/acrn/hsm.c: remove_cpu_store``: the HSM's ``remove_cpu`` sysfs attribute (kstrtoull
parse, checks, HC_SOS_REMOVE_CPU)."""

from __future__ import annotations

import errno

import pytest

from acrn import uapi
from acrn.emu.hsm.sysfs import RemoveCpu, kstrtoull
from acrn.emu.hv import VcpuState
from acrn.emu.machine import Machine


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"3", 3),
        (b"3\n", 3),
        (b"+3", 3),
        (b"0x3", 3),
        (b"0X1f", 31),
        (b"017", 15),
        (b"0", 0),
        (b"18446744073709551615", (1 << 64) - 1),
        (b"2\0junk", 2),
    ],
)
def test_kstrtoull_accepts(text: bytes, value: int) -> None:
    assert kstrtoull(text) == value


@pytest.mark.parametrize(
    "text", [b"", b"\n", b" 3", b"3 ", b"3\n\n", b"-1", b"08", b"0x", b"0xg", b"abc", b"18446744073709551616"]
)
def test_kstrtoull_rejects(text: bytes) -> None:
    assert kstrtoull(text) is None


def test_remove_cpu_offlines_the_cpu_in_linux_and_the_hypervisor() -> None:
    m = Machine()
    attr = RemoveCpu(m.hsm)
    calls: list[tuple[int, int]] = []
    real = m.hv.hypercall

    def spy(hcid: int, p1: int = 0, p2: int = 0) -> int:
        calls.append((hcid, p1))
        return real(hcid, p1, p2)

    m.hv.hypercall = spy  # type: ignore[method-assign]
    assert attr.store(b"2\n") == 2  # a store returns the byte count
    assert calls == [(uapi.HC_SOS_REMOVE_CPU, m.hv.service_vm.vcpus[2].lapic_id)]
    assert 2 not in attr.online
    assert m.hv.service_vm.vcpus[2].state == VcpuState.OFFLINE
    # Again: already offline in Linux, and the hypervisor finds no online vCPU with that id: 0.
    assert attr.store("2") == 1


@pytest.mark.parametrize("text", [b"0", b"0x0", b"4", b"99", b"x", b"-1", b"1 "])
def test_remove_cpu_rejects_boot_cpu_bad_numbers_and_junk(text: bytes) -> None:
    m = Machine()
    assert len(m.hv.service_vm.vcpus) == 4
    attr = RemoveCpu(m.hsm)
    calls: list[int] = []
    m.hv.hypercall = lambda hcid, p1=0, p2=0: calls.append(hcid) or 0  # type: ignore[method-assign]
    assert attr.store(text) == -errno.EINVAL
    assert calls == []
    assert attr.online == {0, 1, 2, 3}


def test_remove_cpu_not_hotpluggable_is_einval() -> None:
    m = Machine()
    attr = RemoveCpu(m.hsm)
    attr.hotpluggable = frozenset({1, 2})
    assert attr.store(b"3") == -errno.EINVAL
    assert 3 in attr.online


def test_remove_cpu_hypercall_failure_onlines_the_cpu_again() -> None:
    m = Machine()
    attr = RemoveCpu(m.hsm)
    seen_online: list[bool] = []

    def refuse(hcid: int, p1: int = 0, p2: int = 0) -> int:
        seen_online.append(1 in attr.online)
        return -1

    m.hv.hypercall = refuse  # type: ignore[method-assign]
    assert attr.store(b"1") == -1  # the hypervisor's value: EPERM for the caller
    assert seen_online == [False]  # offlined before the hypercall
    assert 1 in attr.online
