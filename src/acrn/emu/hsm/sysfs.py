"""The HSM's one sysfs attribute, ``remove_cpu`` (write-only), under the misc device
(``drivers/virt/acrn/hsm.c: remove_cpu_store``).

Writing a CPU number offlines that Service VM CPU in Linux and then asks the hypervisor to take it
away (HC_SOS_REMOVE_CPU with the CPU's LAPIC id).  ACRN's launch scripts do this for the pCPUs a
User VM is to own.  The Service VM's Linux CPU n is its vCPU n here; CPU 0 (the boot CPU) is the
only one that is not hotpluggable.
"""

from __future__ import annotations

import errno
import threading
from typing import TYPE_CHECKING

from acrn import uapi

if TYPE_CHECKING:
    from acrn.emu.hsm.driver import HsmDriver

_HEX = b"0123456789abcdef"


def kstrtoull(data: bytes) -> int | None:
    """Linux ``kstrtoull(s, 0, &v)``, or None where it fails.

    An optional ``+``; ``0x`` followed by a hex digit selects base 16, any other leading ``0``
    base 8, else base 10; at least one digit; one trailing newline allowed and nothing else; the
    value must fit in 64 bits.  The string ends at the first NUL, as a sysfs buffer does.
    """
    s = data.split(b"\0", 1)[0]
    if s[:1] == b"+":
        s = s[1:]
    base = 10
    if s[:1] == b"0":
        if s[1:2] in (b"x", b"X") and s[2:3] != b"" and s[2:3].lower() in _HEX:
            base, s = 16, s[2:]
        else:
            base = 8
    allowed = _HEX[:base]
    n = 0
    while n < len(s) and s[n : n + 1].lower() in allowed and s[n : n + 1] != b"":
        n += 1
    if n == 0 or s[n:] not in (b"", b"\n"):
        return None
    value = int(s[:n], base)
    return value if value < 1 << 64 else None


class RemoveCpu:
    """``remove_cpu_store`` of one loaded HSM, with the Service VM kernel's online-CPU set."""

    def __init__(self, driver: HsmDriver) -> None:
        self.driver = driver
        ncpus = len(driver.hv.service_vm.vcpus)
        self._lock = threading.Lock()
        #: ``cpu_online()``: every Service VM CPU at first.
        self.online: set[int] = set(range(ncpus))
        #: ``cpu_is_hotpluggable()``: all but the boot CPU.
        self.hotpluggable: frozenset[int] = frozenset(range(1, ncpus))

    @property
    def possible(self) -> int:
        """``num_possible_cpus()``."""
        return len(self.driver.hv.service_vm.vcpus)

    def store(self, buf: bytes | str) -> int:
        """A write of ``buf``: its length on success, else a negative errno.

        -EINVAL when the text does not parse, names CPU 0, a CPU beyond the possible ones or one
        that is not hotpluggable.  Otherwise the CPU is offlined if online (that result is not
        checked), then HC_SOS_REMOVE_CPU runs with its LAPIC id; when it fails the CPU is onlined
        again and the hypervisor's error (-1 for the BSP, i.e. EPERM) is returned.
        """
        data = buf.encode() if isinstance(buf, str) else bytes(buf)
        cpu = kstrtoull(data)
        if cpu is None:
            return -errno.EINVAL
        if cpu >= self.possible or cpu == 0 or cpu not in self.hotpluggable:
            return -errno.EINVAL
        with self._lock:
            self.online.discard(cpu)
        lapic_id = self.driver.hv.service_vm.vcpus[cpu].lapic_id
        ret = self.driver.hv.hypercall(uapi.HC_SOS_REMOVE_CPU, lapic_id, 0)
        if ret < 0:
            with self._lock:
                self.online.add(cpu)
            return ret
        return len(data)
