"""``acrn info``: which HSM is used, which accelerators work, the emulated platform, the ABI."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("info", help="show the HSM device, accelerators, emulated platform and ABI summary")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--abi", action="store_true", help="list every ioctl number and struct size")
    p.add_argument(
        "--probe",
        action="store_true",
        help="run the syscall_user guest on bare KVM: does this KVM need the fallback's SYSCALL repair?",
    )
    p.set_defaults(func=run)


def probe_kvm() -> dict[str, Any]:
    """How this host's KVM delivers int3 (kernel mode) and a user-mode SYSCALL (acrn.emu.accel.syscall_repair)."""
    from acrn.emu.accel import availability
    from acrn.emu.accel.syscall_repair import probe

    ok, why = availability("kvm")
    if not ok:
        return {"ran": False, "detail": why}
    r = probe()
    return {
        "ran": True,
        "int3_exits": r.int3_exits,
        "syscall_keeps_user_cs": r.syscall_keeps_user_cs,
        "syscall_repair": r.needed,
    }


def collect(include_abi: bool = True) -> dict[str, Any]:
    """Everything ``acrn info`` reports, as JSON-ready data."""
    from acrn import __version__, uapi
    from acrn.emu.accel import ACCELERATORS, availability
    from acrn.emu.platform import Platform

    real = os.path.exists("/dev/acrn_hsm")
    info: dict[str, Any] = {
        "version": __version__,
        "device": {
            "auto_selects": "kernel" if real else "emulated",
            "kernel_hsm_present": real,
            "description": "/dev/acrn_hsm (real ACRN HSM driver)"
            if real
            else "emulated HSM driver + ACRN hypervisor (no /dev/acrn_hsm on this host)",
        },
        "accelerators": {},
    }
    for name in ACCELERATORS:
        ok, why = availability(name)
        info["accelerators"][name] = {"available": ok, "detail": why}
    plat = Platform.default()
    info["platform"] = plat.describe() if hasattr(plat, "describe") else {"pcpu_num": plat.pcpu_num}
    abi: dict[str, Any] = {
        "header": "linux/acrn.h",
        "ioctl_type": f"{uapi.ACRN_IOCTL_TYPE:#x}",
        "ioctl_count": len(uapi.IOCTLS),
        "struct_count": len(uapi.STRUCTS),
        "endianness": "little",
    }
    if include_abi:
        abi["ioctls"] = {n: f"{v:#010x}" for n, v in uapi.IOCTLS.items()}
        abi["structs"] = {s.__name__: ctypes.sizeof(s) for s in uapi.STRUCTS}
    info["abi"] = abi
    return info


def run(args: argparse.Namespace) -> int:
    info = collect(include_abi=args.json or args.abi)
    if args.probe:
        info["kvm_probe"] = probe_kvm()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    dev = info["device"]
    print(f"pyacrn {info['version']}")
    print(f"HSM device:    {dev['description']}")
    print("accelerators:")
    for name, a in info["accelerators"].items():
        print(f"  {name:5} {'available' if a['available'] else 'unavailable':12} {a['detail']}")
    print("emulated platform:")
    for k, v in info["platform"].items():
        if isinstance(v, list):
            print(f"  {k}:")
            for item in v:
                print(f"    - {item}")
        else:
            print(f"  {k}: {v}")
    abi = info["abi"]
    print(
        f"ABI:           {abi['header']}: {abi['ioctl_count']} ioctls (type {abi['ioctl_type']}), "
        f"{abi['struct_count']} structs, {abi['endianness']}-endian"
    )
    if args.probe:
        pr = info["kvm_probe"]
        print("KVM probe:")
        if not pr["ran"]:
            print(f"  not run: {pr['detail']}")
        else:
            yes = {True: "yes", False: "no"}
            print(f"  int3 in kernel mode is an emulation failure: {yes[pr['int3_exits']]}")
            print(f"  user-mode SYSCALL keeps the user CS/SS:     {yes[pr['syscall_keeps_user_cs']]}")
            state = "active (acrn run's fallback repairs it)" if pr["syscall_repair"] else "not needed"
            print(f"  SYSCALL repair:                            {state}")
    if args.abi:
        for n, v in abi["ioctls"].items():
            print(f"  {n:36} {v}")
        for n, size in abi["structs"].items():
            print(f"  struct {n:29} {size} bytes")
    return 0
