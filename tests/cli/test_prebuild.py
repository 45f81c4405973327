# SPDX-License-Identifier: Apache-2.0
"""prebuild: plans (ops, model presets), the job budget, parallel scheduling, failures, progress lines, Ctrl-C.

Builds here run a fake nvcc (a shell script) so the scheduler and the interrupt path are tested without
spending minutes of CUTLASS compiles; the real compiles are the compile_proof tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flashinfer_sm12x import registry
from flashinfer_sm12x.cli import main
from flashinfer_sm12x.errors import BuildError
from flashinfer_sm12x.jit import build, prebuild
from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels.grouped_mm_fp4 import CANDIDATES, W4A8_CANDIDATES

REPO = Path(__file__).resolve().parents[2]
M64, PP128, CO128 = CANDIDATES
W8PP64, W8CO128, _ = W4A8_CANDIDATES


def _groups(model: str, act: str, arch: str, max_num_tokens: int = 8192) -> list[str]:
    """The preset's plain grouped GEMM modules (one per tactic). Each tactic also brings its MoE epilogue builds,
    checked here: GEMM1's fused activation (every preset tactic has tile_n % 64 == 0) and GEMM2's routed-rows store."""
    deployment = registry.Deployment(registry.MODELS[model], act, max_num_tokens)
    groups = [spec.group for spec in registry.DEPLOYMENT["grouped_mm_fp4"](parse_target(arch), deployment)]
    plain = [g for g in groups if not g.endswith(("_swiglu_quantize", "_store_routed"))]
    assert groups == [f"{g}{suffix}" for g in plain for suffix in ("", "_swiglu_quantize", "_store_routed")]
    return plain


def test_gpt_oss_120b_w4a4_preset_is_the_two_tactics_the_heuristic_picks() -> None:
    # 4 slots x 128 experts: up to 2048 tokens every expert averages <= 64 rows (64-row tiles); beyond, 128-row
    # tiles: Pingpong on sm_120a, Cooperative on sm_121a (Pingpong 128x128 spills there and is not shipped).
    assert _groups("gpt-oss-120b", "mxfp4", "sm_121a") == [f"mxfp4_bfloat16_{M64.name}", f"mxfp4_bfloat16_{CO128.name}"]
    assert _groups("gpt-oss-120b", "mxfp4", "sm_120a") == [f"mxfp4_bfloat16_{M64.name}", f"mxfp4_bfloat16_{PP128.name}"]
    assert _groups("gpt-oss-120b", "mxfp4", "sm_121a", max_num_tokens=2048) == [f"mxfp4_bfloat16_{M64.name}"]


def test_w4a8_presets_follow_the_expert_count() -> None:
    # W4A8 switches to Cooperative 128x128 at 512 rows per expert: 16384 tokens for 128 experts, 4096 for 32.
    assert _groups("gpt-oss-120b", "mxfp8", "sm_121a") == [f"mxfp8_mxfp4_bfloat16_{W8PP64.name}"]
    assert _groups("gpt-oss-20b", "mxfp8", "sm_121a") == [f"mxfp8_mxfp4_bfloat16_{W8PP64.name}",
                                                          f"mxfp8_mxfp4_bfloat16_{W8CO128.name}"]


@pytest.fixture
def recorded_plan(monkeypatch: pytest.MonkeyPatch, cache_root: Path) -> list[list[prebuild.PlanItem]]:
    calls: list[list[prebuild.PlanItem]] = []

    def record(items: list[prebuild.PlanItem], budget: prebuild.JobBudget, **kwargs: object) -> prebuild.Summary:
        calls.append(items)
        return prebuild.Summary(cached=[item.spec.name for item in items])

    monkeypatch.setattr(prebuild, "run_plan", record)
    return calls


def test_model_preset_builds_only_the_moe_modules(recorded_plan: list, capsys: pytest.CaptureFixture) -> None:
    assert main(["prebuild", "--model", "gpt-oss-120b", "--act", "mxfp4", "--arch", "sm_121a"]) == 0
    (items,) = recorded_plan
    assert [item.family for item in items] == ["grouped_mm_fp4"] * 6 + ["quantize", "moe_glue"]  # 2 tactics x 3
    assert all(item.spec.target.name == "sm_121a" for item in items)
    assert all(item.spec.uses_cutlass for item in items if item.family == "grouped_mm_fp4")
    assert [item.spec.group for item in items if item.family == "quantize"] == ["mxfp4"]  # the activation format
    assert [item.spec.group for item in items if item.family == "moe_glue"] == ["mxfp4"]
    assert "prebuild: 8 module(s)" in capsys.readouterr().out


def test_ops_plan_covers_grouped_gemm_and_dedupes(recorded_plan: list) -> None:
    assert main(["prebuild", "--arch", "sm_121a,sm_121a", "--ops", "grouped_mm_fp4,mma_probe"]) == 0
    (items,) = recorded_plan
    names = [item.spec.name for item in items]
    assert len(names) == len(set(names))
    # sm_121a ships 2 W4A4 and 3 W4A8 grouped tactics, in bf16 (what fused_moe runs); the probe has 3 K depths.
    # ... plus GEMM1's fused-activation build of each tactic with tile_n % 64 == 0 (2 W4A4, 2 W4A8) and GEMM2's
    # routed-rows store of every tactic (2 + 3).
    assert [item.family for item in items].count("grouped_mm_fp4") == 2 + 3 + 2 + 2 + 2 + 3
    assert [item.family for item in items].count("mma_probe") == 3


@pytest.mark.parametrize(("argv", "message"), [
    (["--arch", "sm_90a", "--ops", "mma_probe"], "mma_probe has no sm_90a build"),
    (["--arch", "sm_90", "--ops", "mma_probe"], "sm_90a"),
    (["--arch", "sm_120", "--ops", "mma_probe"], "'a'/'f' suffix"),
    (["--arch", "sm_121a", "--ops", "mm_fp5"], "unknown op(s) mm_fp5"),
    (["--arch", "sm_121a", "--ops", "mma_probe", "--jobs", "0"], "--jobs must be at least 1"),
    (["--arch", "sm_121a", "--model", "gpt-oss-20b", "--max-num-tokens", "0"], "--max-num-tokens"),
])
def test_bad_prebuild_requests_are_errors(argv: list[str], message: str, recorded_plan: list,
                                          capsys: pytest.CaptureFixture) -> None:
    assert main(["prebuild", *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "prebuilt" not in captured.out
    assert recorded_plan == []


def test_model_and_ops_are_exclusive(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["prebuild", "--arch", "sm_121a", "--ops", "mma_probe", "--model", "gpt-oss-20b"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_job_budget_reads_cores_and_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:   12582912 kB\n")  # 12 GiB
    monkeypatch.delenv("MAX_JOBS", raising=False)
    budget = prebuild.job_budget(None, meminfo)
    assert budget.jobs == (os.cpu_count() or 1) and budget.memory_bytes == 12 * prebuild.GIB
    assert "fits 2 CUTLASS unit(s)" in budget.why
    monkeypatch.setenv("MAX_JOBS", "3")
    assert prebuild.job_budget(None, meminfo).jobs == 3
    assert prebuild.job_budget(5, meminfo).jobs == 5
    assert prebuild.job_budget(1, tmp_path / "missing").memory_bytes is None


def _fake_items(count: int, cutlass: bool) -> list[prebuild.PlanItem]:
    spec = registry.PREBUILD["mma_probe"](parse_target("sm_121a"))[0]
    specs = [type(spec)(op="fake", group=f"g{i}", target=spec.target, sources=spec.sources, uses_cutlass=cutlass)
             for i in range(count)]
    return [prebuild.PlanItem("fake", s) for s in specs]


@pytest.mark.parametrize(("cutlass", "memory_gib", "expected_peak"), [(True, 8, 1), (True, 12, 2), (False, 8, 4)])
def test_scheduler_keeps_to_jobs_and_memory(monkeypatch: pytest.MonkeyPatch, cache_root: Path, cutlass: bool,
                                            memory_gib: int, expected_peak: int) -> None:
    running, peak, lock = [0], [0], threading.Lock()

    def fake_build(spec: object, root: object = None, **kwargs: object) -> Path:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.15)
        with lock:
            running[0] -= 1
        return Path("/nonexistent")

    monkeypatch.setattr(prebuild, "build_module", fake_build)
    monkeypatch.setattr(prebuild, "_is_cached", lambda spec, root: False)
    lines: list[str] = []
    budget = prebuild.JobBudget(jobs=4, memory_bytes=memory_gib * prebuild.GIB, why="test")
    summary = prebuild.run_plan(_fake_items(8, cutlass), budget, echo=lines.append)
    assert peak[0] == expected_peak
    assert len(summary.built) == 8 and not summary.failed and not summary.cached
    assert sum(line.startswith("[") and " built " in line for line in lines) == 8


def test_a_failed_module_is_reported_and_the_rest_still_build(monkeypatch: pytest.MonkeyPatch,
                                                              cache_root: Path) -> None:
    def fake_build(spec: registry.ModuleSpec, root: object = None, **kwargs: object) -> Path:
        if spec.group == "g1":
            raise BuildError("nvcc said no")
        return Path("/nonexistent")

    monkeypatch.setattr(prebuild, "build_module", fake_build)
    monkeypatch.setattr(prebuild, "_is_cached", lambda spec, root: spec.group == "g2")
    lines: list[str] = []
    summary = prebuild.run_plan(_fake_items(3, False), prebuild.JobBudget(1, None, "test"), echo=lines.append)
    assert [name for name, _ in summary.failed] == [_fake_items(3, False)[1].spec.name]
    assert len(summary.built) == 1 and len(summary.cached) == 1
    assert any("FAILED" in line and "nvcc said no" in line for line in lines)
    assert "1 built, 1 cached, 0 from kernel bundles, 1 failed" in summary.render()


def _fake_nvcc(tmp_path: Path, body: str) -> Path:
    """An nvcc that answers --version like CUDA 13.0 and otherwise runs `body` (records its pid first)."""
    cuda = tmp_path / "fake-cuda"
    (cuda / "bin").mkdir(parents=True)
    nvcc = cuda / "bin" / "nvcc"
    nvcc.write_text(f"""#!/bin/sh
case "$*" in *--version*) echo 'Cuda compilation tools, release 13.0, V13.0.48'; exit 0;; esac
echo $$ >> {tmp_path}/nvcc.pids
{body}
""")
    nvcc.chmod(0o755)
    return nvcc


def test_heartbeat_names_the_translation_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_root: Path,
                                              capfd: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("FLASHINFER_SM12X_NVCC", str(_fake_nvcc(tmp_path, "sleep 1; exit 1")))
    monkeypatch.setattr(build, "HEARTBEAT_SECONDS", 0.3)
    from flashinfer_sm12x.jit import toolchain

    toolchain._nvcc_version.cache_clear()
    spec = registry.PREBUILD["mma_probe"](parse_target("sm_121a"))[0]
    with pytest.raises(BuildError):
        prebuild.build_module(spec)
    err = capfd.readouterr().err
    assert f"building {spec.name}: compiling mma_probe.cu (nvcc) (" in err and "s elapsed)" in err
    assert "starting" not in err
    toolchain._nvcc_version.cache_clear()


def _alive(pid: int) -> bool:
    """Running (a zombie that no parent has reaped yet is stopped: it runs nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_ctrl_c_stops_the_compilers_cleans_up_and_exits_130(tmp_path: Path, cache_root: Path) -> None:
    nvcc = _fake_nvcc(tmp_path, "sleep 120")
    env = dict(os.environ, FLASHINFER_SM12X_NVCC=str(nvcc), FLASHINFER_SM12X_CACHE_DIR=str(cache_root),
               PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "flashinfer_sm12x", "prebuild", "--arch", "sm_121a",
                             "--ops", "mma_probe", "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    pids = tmp_path / "nvcc.pids"
    deadline = time.monotonic() + 60
    while not (pids.exists() and len(pids.read_text().split()) >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids.exists(), "the fake compilers never started"
    interrupted = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert time.monotonic() - interrupted < 10
    assert "Traceback" not in err and err.count("interrupted") == 1, err
    for pid in map(int, pids.read_text().split()):
        assert not _alive(pid), f"fake compiler {pid} still running"
    assert not list(cache_root.rglob(".build-*")), "staging directories left behind"
