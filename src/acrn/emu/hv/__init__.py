"""The emulated ACRN hypervisor core: pure state and rules, no threads, fds or KVM.

The emulated HSM driver (``acrn.emu.hsm``) talks to it only through :meth:`Hypervisor.hypercall`;
a runtime reads VM/vCPU state from it and listens for changes (:class:`HvListener`).

One concern a file, after ACRN's sources: ``hypervisor.py`` (dispatch, its table, config slots, the
public interface; ``vmcall.c``), ``state.py`` (the state tables), ``hc_*.py`` (the handlers, grouped as
``hypervisor/common/hypercall.c`` groups them), ``io_req.py`` (the ioreq page's hypervisor side;
``hypervisor/dm/io_req.c``), ``listener.py`` (:class:`HvListener`), ``vm.py`` (the VM/vCPU records).
"""

from acrn.emu.hv.hypervisor import HV_API_MAJOR_VERSION, HV_API_MINOR_VERSION, HvListener, Hypervisor
from acrn.emu.hv.state import HC_STATE_RULES, VcpuState, VmEvent, VmState
from acrn.emu.hv.vm import EptRegion, HvVm, PtdevIntx, Vcpu

__all__ = [
    "HC_STATE_RULES",
    "HV_API_MAJOR_VERSION",
    "HV_API_MINOR_VERSION",
    "EptRegion",
    "HvListener",
    "HvVm",
    "Hypervisor",
    "PtdevIntx",
    "Vcpu",
    "VcpuState",
    "VmEvent",
    "VmState",
]
