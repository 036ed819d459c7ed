"""vCPU register state: the typed model of ``acrn_vcpu_regs`` and the tools around it."""

from acrn.regs.model import DescriptorPtr, RegsFormatError, VcpuRegs

__all__ = ["DescriptorPtr", "RegsFormatError", "VcpuRegs"]
