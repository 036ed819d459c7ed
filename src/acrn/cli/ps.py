"""``acrn ps``: the live VMs of the hypervisor service, one line each (what ``acrnctl list`` shows)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from acrn.cli import CliError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ps", help="list the VMs of the hypervisor service (acrn hv)")
    p.add_argument("--hv", metavar="SOCKET", help="the service's socket (default: as acrn hv)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _size(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n}{unit}" if unit == "B" else f"{n:.0f}{unit}"
        n //= 1024
    return str(n)


def _age(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def run(args: argparse.Namespace) -> int:
    from acrn.service.server import default_socket_path, query_status

    path = args.hv or default_socket_path()
    try:
        st: dict[str, Any] = query_status(path)
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise CliError(
            f"no pyacrn hypervisor service answers at {path} ({why}); start one with `acrn hv`"
        ) from None
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    rows = [("VMID", "NAME", "STATE", "VCPUS", "MEMORY", "ACCEL", "PID", "UPTIME")]
    for vm in st["vms"]:
        rows.append((str(vm["vmid"]), vm["name"] or "-", vm["state"], str(vm["vcpus"]), _size(vm["memory"]),
                     vm["accelerator"], str(vm["pid"] or "-"), _age(vm["uptime"])))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0
