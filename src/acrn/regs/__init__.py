"""vCPU register state: the typed model of ``acrn_vcpu_regs`` and the tools around it.

Submodules: ``model`` (VcpuRegs), ``validate`` (``validate.validate(regs, level)``, a package with one
module per level; not re-exported here, so that ``acrn.regs.validate`` stays the package), ``presets``,
``show``, ``io``.
"""

from acrn.regs.io import diff, dumps_json, load_regs, loads_regs, save_blob, save_json
from acrn.regs.model import DescriptorPtr, RegsFormatError, VcpuRegs
from acrn.regs.presets import PRESETS
from acrn.regs.validate import Finding, VmxFacts

__all__ = [
    "PRESETS",
    "DescriptorPtr",
    "Finding",
    "RegsFormatError",
    "VcpuRegs",
    "VmxFacts",
    "diff",
    "dumps_json",
    "load_regs",
    "loads_regs",
    "save_blob",
    "save_json",
]
