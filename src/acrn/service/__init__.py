"""One emulated ACRN hypervisor per host (``acrn hv``), and unmodified programs on it (``acrn exec``).

* :mod:`acrn.service.server`: the service; each connection to its Unix socket is one open file
  of ``/dev/acrn_hsm`` on one shared :class:`~acrn.emu.machine.Machine`.
* :mod:`acrn.service.protocol` and ``protocol.h``: the wire format.
* ``preload.c``: the client side, in C, built by ``pip install``; ``acrn exec`` preloads it into a
  program, :mod:`acrn.service.client` calls it from Python.
* :mod:`acrn.service.client_mappings`: client memory as the service maps it (shared, never copied).

``docs/service.md`` has the picture of the processes and the rules.
"""
