"""acrn.rules is the one source of ACRN's register rules: the register tools and the emulated
hypervisor give the same verdict and the same landed state, on the same platform."""

from __future__ import annotations

import ast
import errno
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from acrn import arch, rules
from acrn.emu.machine import Machine
from acrn.emu.platform import Platform
from acrn.errors import HsmError
from acrn.hsm import Hsm
from acrn.regs import presets, show
from acrn.regs.validate import VmxFacts, validate

SRC = Path(__file__).resolve().parents[1] / "src" / "acrn"

#: The rules of acrn.regs.validate that stand for ACRN's is_valid_cr0_cr4.
CR_RULES = frozenset(
    {"acrn.cr0.ne", "acrn.cr0.fixed1", "acrn.cr0.reserved", "acrn.cr4.vmxe", "acrn.cr4.smxe",
     "acrn.cr4.cet", "acrn.cr4.reserved", "acrn.cr4.fixed1"}
)  # fmt: skip

_CR0_BITS = [1 << b for b in (0, 1, 2, 3, 4, 5, 16, 18, 29, 30, 31, 6, 17, 32, 63)]
_CR4_BITS = [1 << b for b in [*range(25), 31, 40]]


def _bits(pool: list[int]) -> st.SearchStrategy[int]:
    return st.lists(st.sampled_from(pool), max_size=6).map(lambda bs: sum(set(bs)))


#: A board: the default VMX FIXED MSRs, with some bits moved between fixed-0, flexible and fixed-1.
platforms = st.builds(
    lambda cr0_f0, cr4_f0, cr4_f1_clear: _platform(cr0_f0, cr4_f0, cr4_f1_clear),
    st.sampled_from([0x80000021, 0x80000001, 0x80000031, 0x80000023]),
    st.sampled_from([0x2000, 0x2020, 0x2001]),
    _bits([1 << b for b in (4, 5, 11, 12, 16, 17, 18, 20, 21, 22, 24)]),
)


def _platform(cr0_fixed0: int, cr4_fixed0: int, cr4_fixed1_clear: int) -> Platform:
    p = Platform.default()
    p.vmx_cr0_fixed0 = cr0_fixed0
    p.vmx_cr4_fixed0 = cr4_fixed0
    p.vmx_cr4_fixed1 = rules.DEFAULT_VMX_CR4_FIXED1 & ~cr4_fixed1_clear | cr4_fixed0
    return p


def test_platform_defaults_are_defined_once() -> None:
    assert VmxFacts.from_platform(Platform.default()) == VmxFacts()
    assert Platform.default().pcpu_num == VmxFacts().pcpu_num == rules.DEFAULT_PCPU_NUM
    assert Platform.default().cr_masks == VmxFacts().cr_masks == rules.DEFAULT_CR_MASKS


@settings(max_examples=200, deadline=None)
@given(platforms, _bits(_CR0_BITS), _bits(_CR4_BITS))
def test_validate_and_hypervisor_give_the_same_cr0_cr4_verdict(p: Platform, cr0: int, cr4: int) -> None:
    regs = presets.reset()
    regs.cr0, regs.cr4 = cr0, cr4
    tool_refuses = bool({f.rule for f in validate(regs, "acrn", p) if f.severity == "error"} & CR_RULES)
    assert tool_refuses is not rules.is_valid_cr0_cr4(cr0, cr4, p.cr_masks)
    with Hsm.open("emulated", machine=Machine(p)) as hsm:
        vm = hsm.create_vm("rules")
        try:
            vm.set_vcpu_regs(regs)
            hv_refuses = False
        except HsmError as e:
            assert e.errno == errno.EPERM
            hv_refuses = True
    assert hv_refuses is tool_refuses


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(sorted(presets.PRESETS)), st.integers(0, (1 << 64) - 1), st.integers(0, 0xFFFF))
def test_register_tool_shows_what_the_hypervisor_lands(name: str, rflags: int, sel: int) -> None:
    regs = presets.PRESETS[name]()
    regs.rflags, regs.ds_sel, regs.tr_sel = rflags, sel, sel
    with Hsm.open("emulated", machine=Machine()) as hsm:
        vm = hsm.create_vm("rules")
        vm.set_vcpu_regs(regs)
        landed = hsm.device.vcpu_state(0)  # type: ignore[attr-defined]
    assert landed == show.effective_state(regs).to_dict()


def test_reset_template_is_a_valid_cr0_cr4_on_the_default_board() -> None:
    st_ = rules.reset_vcpu_state()
    assert rules.is_valid_cr0_cr4(st_.cr0, st_.cr4)
    assert st_.cr0 == arch.CR0_ET | arch.CR0_NE


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_rules_module_is_below_regs_and_emu() -> None:
    below = {m for m in _imports(SRC / "rules.py") if m.startswith("acrn")}
    assert below <= {"acrn", "acrn.arch", "acrn.uapi"}


def test_register_tools_do_not_import_the_emulator() -> None:
    for path in sorted((SRC / "regs").glob("*.py")):
        assert not {m for m in _imports(path) if m.startswith("acrn.emu")}, path.name
        assert "importlib" not in _imports(path), path.name
