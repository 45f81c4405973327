# SPDX-License-Identifier: Apache-2.0
"""The command line's own behaviour: light imports, help listing the ops, the cache check on `cache list`, and
the doctor's findings about FLASHINFER_SM12X_ARCH, repeated problems and FlashInfer versions."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from flashinfer_sm12x import doctor
from flashinfer_sm12x.cli import main
from flashinfer_sm12x.registry import PREBUILD

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import runpy, sys
sys.argv = ["flashinfer-sm12x", *sys.argv[1:]]
try:
    runpy.run_module("flashinfer_sm12x", run_name="__main__")
except SystemExit:
    pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "flashinfer"))
print("HEAVY:" + ",".join(heavy[:5]))
"""


@pytest.mark.parametrize("argv", [["--help"], ["prebuild", "--help"], ["cache", "list"]])
def test_light_commands_import_neither_torch_nor_flashinfer(argv: list[str], cache_root: Path) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY:\n" in out.stdout, out.stdout[-500:]


def test_help_lists_the_ops_and_models() -> None:
    out = subprocess.run([sys.executable, "-m", "flashinfer_sm12x", "prebuild", "--help"], capture_output=True,
                         text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120).stdout
    flat = " ".join(out.split())
    assert all(op in flat for op in PREBUILD) and "grouped_mm_fp4" in flat
    assert "gpt-oss-120b" in flat and "mxfp8" in flat
    top = subprocess.run([sys.executable, "-m", "flashinfer_sm12x", "--help"], capture_output=True, text=True,
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120).stdout
    assert f"ops: {', '.join(PREBUILD)}" in top


def test_cache_list_refuses_a_world_writable_cache(cache_root: Path, capsys: pytest.CaptureFixture) -> None:
    os.chmod(cache_root, 0o777)
    try:
        assert main(["cache", "list"]) == 2
        assert "writable by group or others" in capsys.readouterr().err
        assert main(["prebuild", "--arch", "sm_121a", "--ops", "mma_probe"]) == 2  # refused the same way
        assert "writable by group or others" in capsys.readouterr().err
    finally:
        os.chmod(cache_root, 0o700)
    assert main(["cache", "list"]) == 0


@pytest.mark.parametrize(("value", "needle"), [("garbage", "not a build target"),
                                               ("sm_100a", "not a flashinfer_sm12x target"),
                                               ("sm_121a,bad", "'bad' is not a build target")])
def test_doctor_reports_an_unusable_arch_variable(monkeypatch: pytest.MonkeyPatch, value: str, needle: str) -> None:
    monkeypatch.setenv("FLASHINFER_SM12X_ARCH", value)
    report = doctor.diagnose(selftest=False)
    assert any(needle in p and "FLASHINFER_SM12X_ARCH" in p for p in report.problems), report.problems
    assert "Problems: none found" not in doctor.render_report(report)


def test_doctor_says_sm_90_is_taken_as_sm_90a(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHINFER_SM12X_ARCH", "sm_90")
    report = doctor.diagnose(selftest=False)
    assert any("taken as sm_90a" in w for w in report.warnings), report.warnings
    assert "taken as sm_90a" in doctor.render_report(report)


def test_doctor_says_each_problem_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # A DGX Spark with FLASHINFER_SM12X_ARCH=sm_120: the suffix and the unloadable target, each said once.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (12, 1))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda *a: SimpleNamespace(name="NVIDIA GB10", multi_processor_count=48))
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91500)
    monkeypatch.setenv("FLASHINFER_SM12X_ARCH", "sm_120")
    monkeypatch.setenv("FLASHINFER_SM12X_QUIET", "0")
    capsys.readouterr()
    report = doctor.diagnose(selftest=False)
    text = doctor.render_report(report)
    assert text.count("'a'/'f' suffix") == 1 and text.count("never loaded") == 1, text
    assert "suffix" not in capsys.readouterr().err  # not said a second time on stderr


@pytest.mark.parametrize(("installed", "warned"), [("0.7.4", False), ("0.7.2.post1", False), ("0.6.1", True)])
def test_doctor_names_untested_flashinfer(monkeypatch: pytest.MonkeyPatch, installed: str, warned: bool) -> None:
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: installed if name == "flashinfer-python" else real(name))
    report = doctor.diagnose(selftest=False)
    found = [w for w in report.warnings if "not a tested version" in w]
    assert bool(found) == warned, report.warnings
    if warned:
        assert installed in found[0] and "0.7.2.post1" in found[0] and "0.7.4" in found[0]


def test_doctor_names_the_kernel_source_layout() -> None:
    facts = dict(doctor.diagnose(selftest=False).facts)
    assert facts["kernel sources"].startswith("checkout") and str(REPO) in facts["kernel sources"]


def test_cache_clear_of_an_unknown_module_fails(cache_root: Path, capsys: pytest.CaptureFixture) -> None:
    from flashinfer_sm12x.jit import module
    from flashinfer_sm12x.jit.selftest import selftest_spec

    built = module.build_module(selftest_spec(1)).parent.name
    capsys.readouterr()
    assert main(["cache", "clear", "--module", "jit_selftst"]) == 2
    err = capsys.readouterr().err
    assert "no cached module named 'jit_selftst'" in err and built in err  # names what is there
    assert main(["cache", "clear", "--arch", "sm_121a"]) == 2
    assert main(["cache", "clear", "--module", "jit_selftest"]) == 0  # a prefix still works
    assert "1 removed" in capsys.readouterr().out


def test_cache_list_into_a_closed_pipe_ends_quietly(cache_root: Path) -> None:
    from flashinfer_sm12x.jit import module
    from flashinfer_sm12x.jit.selftest import selftest_spec

    for value in (1, 2, 3):
        module.build_module(selftest_spec(value))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written (`cache list | head -0`)
    proc = subprocess.run([sys.executable, "-m", "flashinfer_sm12x", "cache", "list"], stdout=write,
                          stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 141


@pytest.mark.parametrize("arch", ["sm_999", "sm_999a", "999"])
def test_prebuild_suggests_only_real_targets(arch: str, capsys: pytest.CaptureFixture, cache_root: Path) -> None:
    assert main(["prebuild", "--arch", arch, "--ops", "mma_probe"]) == 2
    err = capsys.readouterr().err
    assert "sm_999a" not in err.replace(arch, "") and "sm_120a" in err


def test_doctor_leaves_the_cache_alone_and_prints_its_header_first(cache_root: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "flashinfer_sm12x", "doctor"], capture_output=True, text=True,
                         cwd=REPO, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.stdout.startswith("flashinfer-sm12x doctor"), out.stdout[:300]
    assert "building" not in out.stderr and "JIT self-test" in out.stdout
    assert "(0 modules" in out.stdout and not any(cache_root.iterdir())  # the self-test used a temporary cache


def test_jobs_and_max_jobs_are_described_alike() -> None:
    from flashinfer_sm12x.cli import JOBS_HELP

    readme = " ".join((REPO / "README.md").read_text().split())
    assert " ".join(JOBS_HELP.split()) in readme
