"""vCPU register state: the typed model of ``acrn_vcpu_regs`` and the tools around it."""

from acrn.regs.io import diff, dumps_json, load_regs, loads_regs, save_blob, save_json
from acrn.regs.model import DescriptorPtr, RegsFormatError, VcpuRegs
from acrn.regs.presets import PRESETS
from acrn.regs.validate import Finding, validate

__all__ = [
    "PRESETS",
    "DescriptorPtr",
    "Finding",
    "RegsFormatError",
    "VcpuRegs",
    "diff",
    "dumps_json",
    "load_regs",
    "loads_regs",
    "save_blob",
    "save_json",
    "validate",
]
