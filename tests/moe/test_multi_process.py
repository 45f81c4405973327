# SPDX-License-Identifier: Apache-2.0
"""scripts/multi_gpu.py's sharded runs over a real collective on the CPU: 2 and 3 processes (torch.multiprocessing,
gloo), each running `fused_moe` (impl="reference", the grouped GEMM's float64 model) on its TP or EP shard, summed
by all_reduce and compared on rank 0 with the unsharded layer. Injected faults show the comparison can fail."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch.distributed as dist

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "multi_gpu.py"
H, INTER = 64, 96

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available in this torch build")


@pytest.fixture(scope="module")
def mg() -> ModuleType:
    spec = importlib.util.spec_from_file_location("multi_gpu_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _config(mg: ModuleType, experts: int, ranks: tuple[int, ...], tokens: tuple[int, ...], *,
            modes: tuple[str, ...] = ("tp", "ep", "ep-skew"), acts: tuple[str, ...] = ("mxfp4", "mxfp8"),
            fault: str | None = None) -> object:
    return mg.Config("cpu", H, INTER, experts, 4, 0, tuple(mg.plan_cases(modes, ranks, acts, tokens)), False, fault)


# E = 9 over 2 ranks splits 4 + 5 experts and E = 8 over 3 ranks 2 + 2 + 4: uneven either way. T = 0 is an idle
# step (nothing launched, an empty all-reduce); I = 96 is 3 blocks, so tp = 2 splits them 2 + 1 and tp = 3 1 + 1 + 1.
# On 3 ranks the groups of 2 (a sub-group of the world) and 3 both run.
@pytest.mark.parametrize(("world", "experts", "ranks", "tokens"), [(2, 9, (2,), (0, 7, 64)), (3, 8, (2, 3), (1, 33))])
def test_shards_combined_over_gloo_equal_the_full_layer(mg: ModuleType, world: int, experts: int,
                                                        ranks: tuple[int, ...], tokens: tuple[int, ...]) -> None:
    cfg = _config(mg, experts, ranks, tokens)
    results = mg.spawn(world, cfg, "fork")
    assert [r.case for r in results] == list(cfg.cases)  # rank 0 judged every case, in order
    for r in results:
        assert r.passed, mg._line(r)
        # float32 outputs through the GEMM model: only the summation order differs from the full layer
        assert r.max_error <= 1e-6
        assert r.zero_rows == ("-" if r.case.mode == "tp" else "zero")
    skew = [r for r in results if r.case.mode == "ep-skew" and r.case.tokens]
    assert skew and all(r.max_error == 0.0 for r in skew)  # every pair on the last rank: nothing else to add


def test_injected_faults_fail(mg: ModuleType) -> None:
    # The fc2 bias on every TP rank adds it tp times: the TP comparisons fail, EP (unaffected) passes.
    both = mg.spawn(2, _config(mg, 9, (2,), (7,), modes=("tp", "ep"), acts=("mxfp8",), fault="bias-every-rank"),
                    "fork")
    assert [(r.case.mode, r.passed) for r in both] == [("tp", False), ("ep", True)]
    assert both[0].max_error > both[0].tolerance
    # Rank 0 without the all-reduce holds only its own shard: every mode fails, ep-skew too (rank 0 has no pair).
    alone = mg.spawn(2, _config(mg, 9, (2,), (7,), acts=("mxfp4",), fault="no-reduce"), "fork")
    assert [r.case.mode for r in alone] == ["tp", "ep", "ep-skew"]
    assert not any(r.passed for r in alone)
    # A rank whose forward raises still joins the collectives: no hang, and rank 0 fails the case saying why.
    raised = mg.spawn(2, _config(mg, 9, (2,), (7,), modes=("ep",), acts=("mxfp4",), fault="rank1-raises"), "fork")
    assert len(raised) == 1 and not raised[0].passed and "raised" in raised[0].notes[0]


def test_dry_run_prints_the_plan(mg: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert mg.main(["--spawn", "3", "--device", "cpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "world 3 on cpu (gloo); layer H=64 I=96 E=32" in out
    assert "tp=3: I columns per rank [(0, 32), (32, 64), (64, 96)], fc2 bias on rank 0" in out
    assert "ep=3: (expert offset, count) per rank [(0, 10), (10, 10), (20, 12)]" in out
    assert "60 cases:" in out  # 3 modes x group sizes {2, 3} x 2 acts x T in {0, 1, 7, 64, 1024}
    with pytest.raises(SystemExit, match=r"group sizes must lie in \[2, world = 2\]"):
        mg.main(["--spawn", "2", "--device", "cpu", "--ranks", "4", "--dry-run"])


def test_results_csv_and_log(mg: ModuleType, tmp_path: Path) -> None:
    case = mg.Case("ep", 3, "mxfp4", 7)
    result = mg.Result(case, 1.5e-7, mg.tolerance(case), "-", "zero", True, 0.25)
    check = mg.DeviceCheck("mm_fp4", False, "differs")
    csv_path, log_path = mg.write_results(tmp_path, [result], ["a line"], "cpu_gloo", [check])
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == mg.CSV_FIELDS
    assert rows[0] == {"mode": "ep", "ranks": "3", "act": "mxfp4", "tokens": "7", "max_error": "1.500e-07",
                        "tolerance": "3.906e-03", "graph": "-", "zero_rows": "zero", "passed": "True",
                        "seconds": "0.250"}
    assert (rows[1]["mode"], rows[1]["act"], rows[1]["passed"]) == ("device-index", "mm_fp4", "False")
    assert log_path.read_text() == "a line\n" and log_path.parent.name == "logs"


def test_device_check_calls_are_well_formed(mg: ModuleType) -> None:
    """The device-index checks' calls, run here with the CPU in place of cuda:1 and meta in place of cuda:0: the
    quantizers return, the GPU ops get past every shape and dtype check to the CUDA one (so on two GPUs they launch),
    and each mixed-device call is refused for its devices."""
    import torch

    cpu, meta = torch.device("cpu"), torch.device("meta")
    calls = mg._op_calls()
    assert len(calls) + len(mg._mixed_calls()) == 12  # tests/test_multi_gpu.py counts the same
    for name in ("mxfp4_quantize", "mxfp8_quantize", "nvfp4_quantize"):
        assert all(t.device == cpu for t in mg._flat(calls[name](cpu)))
    for name in ("mm_fp4", "grouped_mm_fp4", "fused_moe mxfp4", "fused_moe mxfp8"):
        with pytest.raises(ValueError, match="CUDA"):
            calls[name](cpu)
    for call in mg._mixed_calls().values():
        with pytest.raises(ValueError, match=r"one (CUDA )?device, got \['cpu', 'meta'\]|a_global_sf must be on"):
            call(meta, cpu)
