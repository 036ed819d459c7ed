"""``acrn regs``: show, validate, diff, encode, decode and generate SET_VCPU_REGS arguments.

Input files are JSON (C field names, integers or hex strings, missing fields 0) or the exact
296-byte ``acrn_vcpu_regs`` blob; the format is told by the content.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "regs",
        help="inspect, validate and convert vCPU register files (SET_VCPU_REGS arguments)",
        description=__doc__,
    )
    sub = p.add_subparsers(dest="regs_command", metavar="ACTION", required=True)

    s = sub.add_parser("show", help="print a register file as a readable table")
    s.add_argument("file", help="JSON or 296-byte blob ('-' for stdin)")
    s.add_argument(
        "--effective",
        action="store_true",
        help="show the state after ACRN lands it (its set_vcpu_regs rules)",
    )
    s.set_defaults(func=_show)

    v = sub.add_parser("validate", help="check a register file against the HSM, ACRN and VM-entry rules")
    v.add_argument("file")
    v.add_argument("--level", choices=("abi", "acrn", "arch"), default="arch",
                   help="abi: HSM driver; acrn: + hypervisor; arch: + processor VM-entry checks (default)")  # fmt: skip
    v.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    v.set_defaults(func=_validate)

    d = sub.add_parser("diff", help="field-by-field differences (exit 1 if any)")
    d.add_argument("a")
    d.add_argument("b")
    d.set_defaults(func=_diff)

    e = sub.add_parser("encode", help="JSON -> 296-byte blob")
    e.add_argument("file")
    e.add_argument("-o", "--output", required=True, help="blob file to write")
    e.set_defaults(func=_encode)

    c = sub.add_parser("decode", help="296-byte blob -> JSON (hex strings)")
    c.add_argument("file")
    c.add_argument("-o", "--output", help="JSON file to write (default: stdout)")
    c.set_defaults(func=_decode)

    r = sub.add_parser(
        "preset",
        help="print a preset state as JSON: reset, bzimage, ovmf, elf, vsbl, long64 (--list: parameters)",
        epilog="examples:\n  acrn regs preset --list\n  acrn regs preset bzimage --param lowmem=0x10000000"
        "\n  acrn regs preset long64 --param entry=0x100000 -o state.json && acrn regs validate state.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("name", nargs="?", help="the preset (acrn regs preset --list shows them)")
    r.add_argument("--list", action="store_true", help="list the presets with their parameters and defaults")
    r.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="preset parameter (integers in any base, booleans true/false); repeatable")  # fmt: skip
    r.add_argument("-o", "--output", help="write JSON here instead of stdout")
    r.set_defaults(func=_preset)


def _show(args: argparse.Namespace) -> int:
    from acrn.regs import io, show

    regs = io.load_regs(args.file)
    if args.effective:
        print(show.format_state(show.effective_state(regs)), end="")
    else:
        print(show.format_regs(regs), end="")
    return 0


def _validate(args: argparse.Namespace) -> int:
    import json

    from acrn.regs import io
    from acrn.regs.validate import has_errors, validate

    regs = io.load_regs(args.file)
    findings = validate(regs, args.level)
    if args.json:
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        for f in findings:
            print(f"{f.severity}: {f.rule}: {f.message} [{f.source}]")
        errors = sum(f.severity == "error" for f in findings)
        print(f"{args.file}: {errors} error(s), {len(findings) - errors} warning(s) at level {args.level}")
    return 1 if has_errors(findings) else 0


def _diff(args: argparse.Namespace) -> int:
    from acrn.regs import io

    changes = io.diff(io.load_regs(args.a), io.load_regs(args.b))
    for name, va, vb in changes:
        print(f"{name}: {va:#x} -> {vb:#x}")
    return 1 if changes else 0


def _encode(args: argparse.Namespace) -> int:
    from acrn.regs import io

    io.save_blob(io.load_regs(args.file), args.output)
    return 0


def _decode(args: argparse.Namespace) -> int:
    from acrn.regs import io
    from acrn.regs.model import RegsFormatError, VcpuRegs

    with open(args.file, "rb") as f:
        data = f.read()
    if len(data) != io.BLOB_SIZE:
        raise RegsFormatError(f"{args.file}: acrn_vcpu_regs is {io.BLOB_SIZE} bytes, got {len(data)}")
    _emit(io.dumps_json(VcpuRegs.from_bytes(data)), args.output)
    return 0


def _preset(args: argparse.Namespace) -> int:
    from acrn.cli import CliError
    from acrn.regs import io, presets

    if args.list:
        _list_presets()
        return 0
    if not args.name:
        raise CliError(f"preset: give a name ({', '.join(presets.PRESETS)}) or --list", status=2)
    params = presets.parse_params(args.name, args.param)
    _emit(io.dumps_json(presets.make(args.name, **params)), args.output)
    return 0


def _list_presets() -> None:
    """Each preset, what it is (the first line of its doc) and its parameters with their defaults."""
    import inspect

    from acrn.regs import presets

    for name, fn in presets.PRESETS.items():
        doc = (inspect.getdoc(fn) or "").split("\n", 1)[0]
        params = []
        for p in inspect.signature(fn).parameters.values():
            default = p.default
            if isinstance(default, bool) or default is inspect.Parameter.empty:
                shown = str(default).lower() if isinstance(default, bool) else "required"
            elif isinstance(default, int):
                shown = f"{default:#x}" if default > 9 else str(default)
            else:
                shown = repr(default)
            params.append(f"{p.name}={shown}")
        print(f"{name:<8} {doc}")
        print(f"         parameters: {', '.join(params) if params else 'none'}")


def _emit(text: str, output: str | None) -> None:
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        print(text, end="")
