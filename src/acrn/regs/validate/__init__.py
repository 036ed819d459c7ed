"""Validation of a SET_VCPU_REGS argument: "there really is no validation of any fields?"

The answer has three cumulative levels, each a table of small checks with a stable rule id and each
a module of this package (what they share, the finding and the rule table, is :mod:`.core`):

``abi``
    What the HSM driver rejects with ``-EINVAL`` before any hypercall: the reserved fields, in the
    driver's order (``drivers/virt/acrn/hsm.c: acrn_dev_ioctl``).
``acrn``
    What the hypervisor rejects (``is_valid_cr0_cr4``, the vcpu_id bound: the hypercall returns -1,
    errno EPERM; ``hypervisor/common/hypercall.c: hcall_set_vcpu_regs``) as errors, and what it
    silently changes while landing the registers (``hypervisor/arch/x86/guest/vcpu.c: set_vcpu_regs``)
    as warnings.  The rules themselves are :mod:`acrn.rules`, shared with the emulated hypervisor.
``arch``
    The processor's VM-entry guest-state checks (Intel SDM Vol. 3 27.3.1, "Checks on Guest Register
    State") that ACRN does not make, applied to the state ACRN actually lands.  A state that fails
    them makes the first VM entry fail (or, for CR0/CR4, injects #GP through the CR emulation).

``validate(regs, level)`` returns every finding (it does not stop at the first, unlike the driver).
"""

from __future__ import annotations

from typing import Any

from acrn.regs.model import VcpuRegs

# The level modules register their checks in RULES when imported (core.rule keeps the table in LEVELS order).
from acrn.regs.validate import abi, acrn, arch  # noqa: F401
from acrn.regs.validate.core import (
    DEFAULT_LINEAR_BITS,
    DEFAULT_MAXPHYADDR,
    LEVELS,
    RULES,
    SDM_CR,
    SDM_DT,
    SDM_RIP,
    SDM_SEG,
    SEVERITIES,
    SRC_CR,
    SRC_HC,
    SRC_HSM,
    SRC_LAND,
    SRC_VMCS,
    Check,
    Context,
    Finding,
    Hit,
    Rule,
    VmxFacts,
    enters_ia32e,
    entry_mode,
    rule,
)

__all__ = [
    "DEFAULT_LINEAR_BITS",
    "DEFAULT_MAXPHYADDR",
    "LEVELS",
    "RULES",
    "SDM_CR",
    "SDM_DT",
    "SDM_RIP",
    "SDM_SEG",
    "SEVERITIES",
    "SRC_CR",
    "SRC_HC",
    "SRC_HSM",
    "SRC_LAND",
    "SRC_VMCS",
    "Check",
    "Context",
    "Finding",
    "Hit",
    "Rule",
    "VmxFacts",
    "enters_ia32e",
    "entry_mode",
    "has_errors",
    "rule",
    "rule_ids",
    "validate",
]


def validate(
    regs: VcpuRegs,
    level: str = "arch",
    platform: object | None = None,
    *,
    maxphyaddr: int | None = None,
    unrestricted_guest: bool | None = None,
) -> list[Finding]:
    """Every finding for ``regs`` at ``level`` and below ("arch" includes "acrn" includes "abi").

    ``platform`` supplies the VMX fixed bits and pCPU count (default: the default board of
    :mod:`acrn.rules`, the same as the emulator's ``Platform.default()``; or a :class:`VmxFacts`).
    ``maxphyaddr`` (default 46) bounds CR3; ``unrestricted_guest`` (default True, as ACRN requires)
    relaxes the real-mode and RPL rules.
    """
    if level not in LEVELS:
        raise ValueError(f"level: {level!r} is not one of {', '.join(LEVELS)}")
    regs.validate_ranges()
    facts = VmxFacts.from_platform(platform)
    if maxphyaddr is not None:
        facts = _replace(facts, maxphyaddr=maxphyaddr)
    if unrestricted_guest is not None:
        facts = _replace(facts, unrestricted_guest=unrestricted_guest)
    ctx = Context(regs, facts, facts.cr_masks)
    upto = LEVELS.index(level)
    out: list[Finding] = []
    for r in RULES:
        if LEVELS.index(r.level) > upto:
            continue
        for hit in r.check(ctx):
            out.append(Finding(r.level, hit.severity, r.rule, hit.fields, hit.message, r.source))
    return out


def _replace(facts: VmxFacts, **changes: Any) -> VmxFacts:
    import dataclasses

    return dataclasses.replace(facts, **changes)


def has_errors(findings: list[Finding]) -> bool:
    """True if any finding is an error (the CLI's exit status)."""
    return any(f.severity == "error" for f in findings)


def rule_ids() -> list[str]:
    """Every rule id, in report order."""
    return [r.rule for r in RULES]
