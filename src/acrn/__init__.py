"""pyacrn: the ACRN hypervisor's userspace (HSM) interface, and an emulated ACRN behind it."""

from acrn.errors import HsmError

__all__ = ["HsmError", "__version__"]
__version__ = "0.1.0"
