"""The power-management hypercall (``hypervisor/common/hypercall.c``): a VM's P- and C-states
as the platform describes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from acrn import uapi
from acrn.emu.hv.state import EINVAL

if TYPE_CHECKING:
    from acrn.emu.hv.hypervisor import Hypervisor, Target


def hcall_get_cpu_pm_state(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    cmd_type = p1 & uapi.PMCMD_TYPE_MASK
    cx = hv.platform.cx_states
    if cmd_type == uapi.ACRN_PMCMD_GET_PX_CNT:
        # vHWP: continuous P-states, px_cnt 0; P-state passthrough is hard-wired off otherwise.
        if not t.config.vhwp:
            return -1
        return 0 if hv.memory.write(p2, b"\0") else EINVAL
    if cmd_type == uapi.ACRN_PMCMD_GET_PX_DATA:
        return -1
    if cmd_type == uapi.ACRN_PMCMD_GET_CX_CNT:
        return 0 if hv.memory.write(p2, bytes([len(cx)])) else EINVAL  # one byte
    if cmd_type == uapi.ACRN_PMCMD_GET_CX_DATA:
        n = (p1 & uapi.PMCMD_STATE_NUM_MASK) >> uapi.PMCMD_STATE_NUM_SHIFT
        if not cx or n == 0 or n > len(cx):
            return -1
        return 0 if hv.memory.write(p2, cx[n - 1].to_bytes()) else EINVAL
    return -1
