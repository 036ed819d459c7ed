"""acrn.regs.validate: every rule has a breaking and a passing state, and the levels nest."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from acrn import arch, rules
from acrn.emu.platform import Platform
from acrn.regs import presets
from acrn.regs import validate as v
from acrn.regs.model import DescriptorPtr, VcpuRegs
from acrn.regs.validate import RULES, VmxFacts, validate

Mutator = Callable[[VcpuRegs], None]


def pm() -> VcpuRegs:
    """A clean 32-bit protected-mode state (flat CS 0xC09B): no finding at any level."""
    return VcpuRegs(cr0=0x31, cs_sel=0x10, cs_ar=0xC09B, cs_limit=0xFFFFFFFF, ss_sel=0x18, ds_sel=0x18,
                    es_sel=0x18, rip=0x100000)  # fmt: skip


def long() -> VcpuRegs:
    return presets.long64()


def real() -> VcpuRegs:
    return presets.reset()


def setting(**changes: object) -> Mutator:
    def m(r: VcpuRegs) -> None:
        for k, val in changes.items():
            setattr(r, k, val)

    return m


def nothing(r: VcpuRegs) -> None:
    pass


@dataclass
class Case:
    rule: str
    breaks: Mutator
    passes: Mutator = nothing
    base: Callable[[], VcpuRegs] = pm
    severity: str = "error"
    facts: VmxFacts | None = None
    pass_base: Callable[[], VcpuRegs] | None = None
    pass_facts: VmxFacts | None = None
    extra: dict[str, object] = field(default_factory=dict)


def _set_desc_reserved(name: str, i: int, val: int) -> Mutator:
    def m(r: VcpuRegs) -> None:
        getattr(r, name).reserved[i] = val

    return m


def _set_list(name: str, i: int, val: int) -> Mutator:
    def m(r: VcpuRegs) -> None:
        getattr(r, name)[i] = val

    return m


def _or(name: str, bits: int) -> Mutator:
    def m(r: VcpuRegs) -> None:
        setattr(r, name, getattr(r, name) | bits)

    return m


def _and_not(name: str, bits: int) -> Mutator:
    def m(r: VcpuRegs) -> None:
        setattr(r, name, getattr(r, name) & ~bits)

    return m


NO_UG = VmxFacts(unrestricted_guest=False)
PF = v.VmxFacts()

CASES = [
    Case("abi.reserved", _set_list("reserved", 1, 1)),
    Case("abi.reserved_32", _set_list("reserved_32", 2, 5)),
    Case("abi.reserved_64", _set_list("reserved_64", 3, 1)),
    Case("abi.descriptor_reserved", _set_desc_reserved("idt", 2, 1)),
    Case("acrn.vcpu_id", setting(vcpu_id=8), setting(vcpu_id=7), facts=VmxFacts(pcpu_num=8)),
    Case("acrn.cr0.ne", setting(cr0=0x11), setting(cr0=0x31)),
    Case("acrn.cr0.fixed1", setting(cr0=0x21), setting(cr0=0x31), facts=VmxFacts(cr0_fixed0=0x80000031)),
    Case("acrn.cr0.reserved", _or("cr0", 1 << 32), _or("cr0", arch.CR0_WP | arch.CR0_AM | arch.CR0_CD)),
    Case(
        "acrn.cr4.vmxe",
        setting(cr4=arch.CR4_VMXE),
        setting(cr4=arch.CR4_VMXE),
        pass_facts=VmxFacts(nested_vmx=True),
    ),
    Case("acrn.cr4.smxe", setting(cr4=arch.CR4_SMXE)),
    Case("acrn.cr4.cet", setting(cr4=arch.CR4_CET)),
    Case("acrn.cr4.reserved", setting(cr4=1 << 15), setting(cr4=arch.CR4_OSFXSR | arch.CR4_PGE)),
    Case("acrn.cr4.fixed1", setting(cr4=0), setting(cr4=arch.CR4_PAE), facts=VmxFacts(cr4_fixed0=0x2020)),
    Case("acrn.rflags.masked", setting(rflags=0x2C3), setting(rflags=0x202), severity="warning"),
    Case("acrn.rflags.bit1", setting(rflags=0x200), setting(rflags=0), severity="warning"),
    Case("acrn.segment.real_mode_base", setting(ds_sel=0x1000), base=real, severity="warning"),
    Case("acrn.segment.forced", setting(tr_sel=0x28), severity="warning"),
    Case("acrn.cr4.stripped", setting(cr4=arch.CR4_MCE), severity="warning"),
    Case("acrn.efer.compat", setting(cs_ar=0xC09B), base=long, severity="warning"),
    Case("arch.cr0.pg_pe", setting(cr0=0x80000030), setting(cr0=0x80000031)),
    Case("arch.cr0.nw_cd", setting(cr0=0x20000031), setting(cr0=0x60000031)),
    Case("arch.cr0.pe_unrestricted", nothing, setting(cr0=0x80000031), base=real, facts=NO_UG, pass_base=pm),
    Case("arch.cr4.reserved", setting(cr4=1 << 15)),
    Case("arch.cr4.cet_wp", setting(cr4=arch.CR4_CET), setting(cr4=arch.CR4_CET, cr0=0x31 | arch.CR0_WP)),
    Case("arch.cr4.pcide", _or("cr4", arch.CR4_PCIDE), _or("cr4", arch.CR4_PCIDE), pass_base=long),
    Case("arch.cr3.reserved", setting(cr3=1 << 46), setting(cr3=(1 << 46) - 4096)),
    Case("arch.ia32e.pg", _and_not("cr0", arch.CR0_PG), base=long),
    Case("arch.ia32e.pae", setting(cr4=0), base=long),
    Case("arch.efer.reserved", setting(ia32_efer=1 << 1), setting(ia32_efer=arch.EFER_NXE | arch.EFER_SCE)),
    Case("arch.efer.lma_ia32e", setting(cs_ar=0xC09B), base=long),
    Case(
        "arch.efer.lme_lma",
        setting(cr0=0x80000031, ia32_efer=arch.EFER_LME),
        setting(ia32_efer=arch.EFER_LME),
    ),
    Case("arch.cs.type", setting(cs_ar=0xC09A), setting(cs_ar=0xC093)),
    Case("arch.cs.s", setting(cs_ar=0xC08B)),
    Case("arch.cs.dpl", setting(cs_ar=0xC0FB), setting(cs_ar=0xC09F)),
    Case("arch.cs.p", setting(cs_ar=0xC01B)),
    Case("arch.cs.reserved_11_8", setting(cs_ar=0xCF9B)),
    Case("arch.cs.reserved_31_17", setting(cs_ar=0x2C09B)),
    Case("arch.cs.unusable", setting(cs_ar=0x1C09B), severity="warning"),
    Case("arch.cs.l_and_db", setting(cs_ar=0xE09B), base=long),
    Case("arch.cs.l_outside_ia32e", setting(cs_ar=0xA09B), setting(cs_ar=0xC09B)),
    Case("arch.cs.limit_g", setting(cs_limit=0xFFFFF000), setting(cs_ar=0x409B, cs_limit=0xFFFFF)),
    Case("arch.cs.base", setting(cs_base=1 << 32), setting(cs_base=0xFFFFF000)),
    Case("arch.ss.rpl", setting(ss_sel=0x1B), setting(ss_sel=0x1B), facts=NO_UG, pass_facts=PF),
    Case("arch.data.rpl", setting(fs_sel=0x23), setting(fs_sel=0x23), facts=NO_UG, pass_facts=PF),
    Case("arch.tr.ti", setting(tr_sel=0x2C), setting(tr_sel=0x28)),
    Case("arch.ldtr.ti", setting(ldt_sel=0x34), setting(ldt_sel=0x30)),
    Case(
        "arch.gdtr.base",
        setting(gdt=DescriptorPtr(base=1 << 47, limit=31)),
        setting(gdt=DescriptorPtr(base=0xFFFF800000000000, limit=31)),
    ),
    Case(
        "arch.idtr.base",
        setting(idt=DescriptorPtr(base=0x0001000000000000)),
        setting(idt=DescriptorPtr(base=0x00007FFFFFFFF000)),
    ),
    Case("arch.rip.high", setting(rip=1 << 32), setting(rip=1 << 32), pass_base=long),
    Case("arch.rip.canonical", setting(rip=1 << 47), setting(rip=0xFFFF800000000000), base=long),
    Case("arch.rflags.fixed1", setting(rflags=0x200), setting(rflags=0)),
    Case("arch.rflags.reserved", setting(rflags=0x202 | 1 << 15), setting(rflags=0x202 | 1 << 21)),
    Case("arch.rflags.vm", setting(rflags=0x20202), setting(rflags=0x202)),
]


def _rules(regs: VcpuRegs, facts: VmxFacts | None) -> dict[str, list[v.Finding]]:
    out: dict[str, list[v.Finding]] = {}
    for f in validate(regs, "arch", facts):
        out.setdefault(f.rule, []).append(f)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.rule for c in CASES])
def test_rule_fires_on_breaking_state_only(case: Case) -> None:
    bad = case.base()
    case.breaks(bad)
    found = _rules(bad, case.facts)
    assert case.rule in found, f"{case.rule} did not fire; got {sorted(found)}"
    f = found[case.rule][0]
    assert f.severity == case.severity
    assert f.level == case.rule.split(".")[0]
    assert f.fields and all(p.startswith(("vcpu_regs.", "reserved", "vcpu_id")) for p in f.fields)
    assert f.source
    good = (case.pass_base or case.base)()
    case.passes(good)
    facts = case.pass_facts if case.pass_facts is not None else case.facts
    assert case.rule not in _rules(good, facts)


def test_every_rule_has_a_case() -> None:
    assert sorted(c.rule for c in CASES) == sorted(r.rule for r in RULES)
    assert len(set(v.rule_ids())) == len(RULES)


def test_clean_protected_mode_state_has_no_findings() -> None:
    assert validate(pm()) == []


def test_levels_are_cumulative() -> None:
    r = presets.elf()
    r.reserved[0] = 1
    r.cr0 = 0x11  # NE clear
    abi = {f.rule for f in validate(r, "abi")}
    acrn = {f.rule for f in validate(r, "acrn")}
    arch_ = {f.rule for f in validate(r, "arch")}
    assert abi == {"abi.reserved"}
    assert acrn == abi | {"acrn.cr0.ne"}
    assert arch_ >= acrn | {"arch.cs.reserved_11_8"}
    assert {f.level for f in validate(r, "acrn")} == {"abi", "acrn"}


def test_abi_findings_follow_the_driver_order() -> None:
    r = pm()
    r.gdt.reserved[0] = 1
    r.reserved_64[0] = 1
    r.reserved_32[0] = 1
    r.reserved[2] = 1
    assert [f.rule for f in validate(r, "abi")] == [
        "abi.reserved", "abi.reserved_32", "abi.reserved_64", "abi.descriptor_reserved"
    ]  # fmt: skip


def test_abi_finding_names_every_nonzero_field() -> None:
    r = pm()
    r.gdt.reserved[1] = 7
    r.idt.reserved[1] = 9
    (f,) = validate(r, "abi")
    assert f.fields == ["vcpu_regs.gdt.reserved[1]", "vcpu_regs.idt.reserved[1]"]
    assert "0x7" in f.message and "0x9" in f.message and "EINVAL" in f.message


@pytest.mark.parametrize(("cr0", "ok"), [(0x30, True), (0x31, True), (0x1, False), (0x0, False)])
def test_is_valid_cr0_cr4_matches_acrn_examples(cr0: int, ok: bool) -> None:
    assert rules.is_valid_cr0_cr4(cr0, 0, VmxFacts().cr_masks) is ok


@pytest.mark.parametrize("cr4", [arch.CR4_VMXE, arch.CR4_SMXE, arch.CR4_CET])
def test_is_valid_cr0_cr4_refuses_vmxe_smxe_cet(cr4: int) -> None:
    assert not rules.is_valid_cr0_cr4(0x31, cr4, VmxFacts().cr_masks)


def test_cr_masks_agree_with_emulated_hypervisor() -> None:
    p = Platform.default()
    assert VmxFacts.from_platform(p).cr_masks == p.cr_masks


def test_platform_facts_are_read_from_a_platform_object() -> None:
    p = SimpleNamespace(vmx_cr0_fixed0=0x80000031, vmx_cr0_fixed1=0xFFFFFFFF, pcpu_num=2)
    f = VmxFacts.from_platform(p)
    assert (f.cr0_fixed0, f.pcpu_num) == (0x80000031, 2)
    r = pm()
    r.vcpu_id = 2
    assert "acrn.vcpu_id" in {x.rule for x in validate(r, "acrn", p)}


def test_maxphyaddr_parameter_bounds_cr3() -> None:
    r = pm()
    r.cr3 = 1 << 40
    assert "arch.cr3.reserved" in {f.rule for f in validate(r, maxphyaddr=39)}
    assert "arch.cr3.reserved" not in {f.rule for f in validate(r, maxphyaddr=46)}


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="level"):
        validate(pm(), "kernel")


def test_finding_to_dict_has_the_documented_keys() -> None:
    r = pm()
    r.cr0 = 0x11
    d = validate(r)[0].to_dict()
    assert d == {
        "level": "acrn",
        "severity": "error",
        "rule": "acrn.cr0.ne",
        "fields": ["vcpu_regs.cr0"],
        "message": d["message"],
        "source": v.SRC_CR,
    }
    assert "cr0 = 0x11" in d["message"] and "NE" in d["message"]


def test_l_and_db_outside_ia32e_is_only_a_warning() -> None:
    r = pm()
    r.cs_ar = 0xE09B
    (f,) = [x for x in validate(r) if x.rule == "arch.cs.l_and_db"]
    assert f.severity == "warning"


def test_unpaged_protected_mode_needs_unrestricted_guest() -> None:
    assert "arch.cr0.pe_unrestricted" in {f.rule for f in validate(pm(), unrestricted_guest=False)}
    assert "arch.cr0.pe_unrestricted" not in {f.rule for f in validate(pm())}


def test_real_mode_is_a_warning_with_unrestricted_guest() -> None:
    (f,) = [x for x in validate(real()) if x.rule == "arch.cr0.pe_unrestricted"]
    assert f.severity == "warning"


def test_rflags_vm_in_protected_mode_is_refused_because_acrn_cannot_land_v8086_segments() -> None:
    r = pm()
    r.rflags = 0x20202
    (f,) = [x for x in validate(r) if x.rule == "arch.rflags.vm"]
    assert "virtual-8086" in f.message


def test_validate_does_not_modify_its_input() -> None:
    r = presets.elf(multiboot=True)
    before = dataclasses.replace(r)
    validate(r)
    assert r == before
