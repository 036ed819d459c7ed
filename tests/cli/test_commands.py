"""The `acrn` command: info, run, demo (through acrn.cli.main, as a user runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from acrn.cli import main
from acrn.guests import GUESTS


def test_info_reports_device_accelerators_platform_and_abi(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["device"]["auto_selects"] in ("kernel", "emulated")
    assert set(info["accelerators"]) == {"kvm", "soft"}
    assert info["abi"]["ioctl_count"] == 27
    assert info["abi"]["ioctls"]["ACRN_IOCTL_SET_VCPU_REGS"] == "0x4128a216"
    assert info["platform"]


def test_info_text_names_each_part(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("HSM device:", "accelerators:", "emulated platform:", "ABI:"):
        assert word in out


@pytest.mark.kvm
def test_info_probe_reports_what_the_repair_decides(capsys: pytest.CaptureFixture[str]) -> None:
    from acrn.emu.accel import availability
    from acrn.emu.accel.syscall_repair import probe

    assert main(["info", "--json", "--probe"]) == 0
    pr = json.loads(capsys.readouterr().out)["kvm_probe"]
    if not availability("kvm")[0]:
        assert pr["ran"] is False and pr["detail"]
        return
    r = probe()
    assert (pr["int3_exits"], pr["syscall_keeps_user_cs"], pr["syscall_repair"]) == (
        r.int3_exits,
        r.syscall_keeps_user_cs,
        r.needed,
    )
    assert main(["info", "--probe"]) == 0
    text = capsys.readouterr().out
    assert "SYSCALL repair:" in text and ("active" in text) == r.needed


@pytest.mark.parametrize(
    "accel", [pytest.param("kvm", marks=pytest.mark.kvm), pytest.param("soft", marks=pytest.mark.soft)]
)
def test_demo_prints_the_three_greetings(accel: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--device", "emulated", "--accel", accel]) == 0
    out = capsys.readouterr().out
    for mode in ("real", "protected", "long"):
        assert f"hello from {mode} mode" in out
    assert f"on {accel}" in out


def test_demo_rejects_unknown_guest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "nosuchguest"]) == 2
    assert "unknown guest 'nosuchguest'" in capsys.readouterr().err


@pytest.fixture
def hello_long(tmp_path: Path) -> Path:
    p = tmp_path / "hello_long.bin"
    p.write_bytes(GUESTS["hello_long"].image())
    return p


@pytest.mark.soft
def test_run_with_preset_halts_with_status_0_and_dumps_state(
    hello_long: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    dump = tmp_path / "state.json"
    rc = main(["run", "--load", f"{hello_long}@0x8000", "--preset", "long", "--entry", "0x8000",
               "--accel", "soft", "--device", "emulated", "--dump-state", str(dump)])  # fmt: skip
    out, err = capfd.readouterr()
    assert rc == 0
    assert "hello from long mode" in out
    assert "VM ended: halt (status 0)" in err
    state = json.loads(dump.read_text())["0"]
    assert state["mode"] == "long" and state["cs"]["ar"] == 0xA09B


@pytest.mark.soft
def test_run_with_regs_file_and_debugexit_status(tmp_path: Path) -> None:
    g = GUESTS["debugexit"]
    img = tmp_path / "g.bin"
    img.write_bytes(g.image())
    regs = tmp_path / "regs.json"
    regs.write_text(json.dumps(g.regs(rax=5).to_json_dict(hex_values=True)))
    rc = main(
        [
            "run",
            "--load",
            f"{img}@{g.load_gpa:#x}",
            "--regs",
            str(regs),
            "--accel",
            "soft",
            "--device",
            "emulated",
        ]
    )
    assert rc == (5 << 1) | 1


@pytest.mark.soft
def test_run_times_out_with_status_124(tmp_path: Path) -> None:
    img = tmp_path / "spin.bin"
    img.write_bytes(GUESTS["spin"].image())
    rc = main(["run", "--load", f"{img}@0x8000", "--preset", "protected", "--timeout", "0.3", "--accel", "soft",
               "--device", "emulated"])  # fmt: skip
    assert rc == 124


def test_run_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--load", f"{tmp_path}/missing.bin@0x8000", "--preset", "real"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("acrn: error: --load") and "No such file" in err[0]
    with pytest.raises(SystemExit) as e:
        main(["run", "--load", "nofile", "--preset", "real"])
    assert e.value.code == 2


def test_help_starts_without_heavy_imports() -> None:
    r = subprocess.run([sys.executable, "-m", "acrn", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in r.stdout and "run" in r.stdout and "regs" in r.stdout


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`acrn info | head -1`: no traceback and no error line when the reader goes away."""
    r = subprocess.run(
        f"{sys.executable} -m acrn info --abi | head -1",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout.startswith("pyacrn")
    assert r.stderr == ""


def test_run_elf64_is_refused_by_the_elf_loader_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """acrn-dm's -E loads ELFCLASS32 only (devicemodel/core/sw_load_elf.c: acrn_load_elf): a 64-bit
    ELF is refused before the VM exists, naming the file and the option to use instead."""
    img = tmp_path / "k64.elf"
    img.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(0x100))
    rc = main(
        ["run", "-E", str(img), "-m", "16M", "--accel", "soft", "--device", "emulated", "--stdin", "off"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert err[0].startswith(f"acrn: error: {img}: an ELF64 file") and "ELF32" in err[0]
    assert "use --vmlinux" in err[0]
