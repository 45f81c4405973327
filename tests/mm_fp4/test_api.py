# SPDX-License-Identifier: Apache-2.0
"""mm_fp4 / mm_mxfp8_mxfp4 input validation: typed errors before any allocation or launch (CPU-only)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import flashinfer_sm12x as fs
from flashinfer_sm12x.formats import mxfp4_quantize, mxfp8_quantize
from flashinfer_sm12x.integrations.flashinfer_mm_fp4 import mm_fp4
from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels.mm_fp4 import FAMILY, FORMATS, heuristic
from flashinfer_sm12x.ops.mm_fp4 import mm_mxfp8_mxfp4
from tests.mm_fp4.operands import mxfp4_operands as make_operands

M, N, K = 7, 24, 256


@pytest.fixture(scope="module")
def operands() -> dict[str, torch.Tensor]:
    return make_operands(M, N, K, seed=0)


def call(ops: dict[str, torch.Tensor], **changes: object) -> torch.Tensor:
    kwargs: dict[str, object] = dict(ops, block_size=32, use_nvfp4=False, backend="cutlass_sm12x")
    kwargs.update(changes)
    return mm_fp4(**kwargs)  # type: ignore[arg-type]


BAD: list[tuple[str, Callable[[dict[str, torch.Tensor]], dict[str, object]], type[Exception], str]] = [
    ("a not a tensor", lambda o: {"a": [[1, 2]]}, TypeError, "torch.Tensor"),
    ("a float", lambda o: {"a": o["a"].float()}, TypeError, "packed e2m1"),
    ("b int32", lambda o: {"b": o["b"].to(torch.int32)}, TypeError, "packed e2m1"),
    ("scales float32", lambda o: {"a_descale": o["a_descale"].float()}, TypeError, "a_descale"),
    ("nvfp4 scales for mxfp4", lambda o: {"a_descale": o["a_descale"].view(torch.float8_e4m3fn)}, TypeError,
     "a_descale"),
    ("K mismatch", lambda o: {"a": o["a"][:, :64].contiguous()}, ValueError, "K mismatch"),
    ("b not transposed", lambda o: {"b": o["b"].T.contiguous()}, ValueError, "K mismatch"),
    ("b row-major", lambda o: {"b": o["b"].contiguous()}, ValueError, "transpose"),
    ("a non-contiguous", lambda o: {"a": torch.cat([o["a"], o["a"]], 1)[:, ::2]}, ValueError, "contiguous"),
    ("block size 16 for MXFP4", lambda o: {"block_size": 16}, ValueError, "block_size=32"),
    ("8x4 layout", lambda o: {"use_8x4_sf_layout": True}, ValueError, "128x4"),
    ("a scales too few", lambda o: {"a_descale": o["a_descale"][:64]}, ValueError, "128x4"),
    ("b scales not transposed", lambda o: {"b_descale": o["b_descale"].T}, ValueError, "128x4"),
    ("alpha float64", lambda o: {"alpha": torch.ones(1, dtype=torch.float64)}, ValueError, "alpha"),
    ("alpha per row", lambda o: {"alpha": torch.ones(M)}, ValueError, "alpha"),
    ("out_dtype fp32", lambda o: {"out_dtype": torch.float32}, ValueError, "out_dtype"),
    ("out wrong shape", lambda o: {"out": torch.empty(M, N + 8, dtype=torch.bfloat16)}, ValueError, "shape"),
    ("out wrong dtype", lambda o: {"out": torch.empty(M, N, dtype=torch.float16)}, TypeError, "out_dtype"),
    ("device mismatch", lambda o: {"b_descale": o["b_descale"].to("meta")}, ValueError, "one device"),
    ("unknown backend", lambda o: {"backend": "marlin"}, ValueError, "unknown backend"),
    ("CPU tensors", lambda o: {}, ValueError, "CUDA"),
]


@pytest.mark.parametrize(("case", "change", "error", "match"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_typed_error(operands: dict[str, torch.Tensor], case: str,
                                    change: Callable[[dict[str, torch.Tensor]], dict[str, object]],
                                    error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call(operands, **change(operands))


def test_k_and_n_alignment() -> None:
    a = torch.zeros(4, 24, dtype=torch.uint8)  # NVFP4 with K = 48: blocks fit, TMA rows (24 B) do not
    w = torch.zeros(16, 24, dtype=torch.uint8)
    sf = torch.zeros(128, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="multiple of 32"):
        mm_fp4(a, w.T, sf, sf.T, block_size=16, use_nvfp4=True)
    x8, x8_sf = mxfp8_quantize(torch.randn(4, 160))  # W4A8 with K = 160
    w, w_sf = mxfp4_quantize(torch.randn(16, 160))
    with pytest.raises(ValueError, match="multiple of 128"):
        mm_mxfp8_mxfp4(x8, w.T, x8_sf, w_sf.T)
    a, a_sf = mxfp4_quantize(torch.randn(4, 128))
    w, w_sf = mxfp4_quantize(torch.randn(12, 128))
    with pytest.raises(ValueError, match="multiple of 8"):
        mm_fp4(a, w.T, a_sf, w_sf.T, block_size=32, use_nvfp4=False)


def test_failed_call_leaves_out_untouched(operands: dict[str, torch.Tensor]) -> None:
    out = torch.full((M, N), 3.0, dtype=torch.bfloat16)
    with pytest.raises(ValueError):
        call(operands, out=out, alpha=torch.ones(2))
    assert torch.all(out == 3.0)


def test_w4a8_validation() -> None:
    x8, x8_sf = mxfp8_quantize(torch.randn(M, K))
    w, w_sf = mxfp4_quantize(torch.randn(N, K))
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        mm_mxfp8_mxfp4(x8.view(torch.uint8), w.T, x8_sf, w_sf.T)
    with pytest.raises(ValueError, match="CUDA"):
        mm_mxfp8_mxfp4(x8, w.T, x8_sf, w_sf.T)
    with pytest.raises(ValueError, match="128x4"):
        mm_mxfp8_mxfp4(x8, w.T, x8_sf[:100], w_sf.T)


def test_heuristic_orders_every_tactic_once() -> None:
    for fmt in FORMATS:
        shipped = FAMILY.shipped(fmt)
        for m in (1, 7, 64, 127, 128, 300, 4096, 8192):
            order = heuristic(m, 2880, 2880, fmt)
            assert sorted(order, key=shipped.index) == list(shipped)
    assert heuristic(1, 4096, 4096)[0].schedule == "pingpong"  # decode: Pingpong, the narrowest N tile first
    assert heuristic(1, 4096, 4096)[0].tile_n == min(t.tile_n for t in FAMILY.shipped("mxfp4"))
    assert heuristic(8192, 57344, 8192)[0].schedule == "cooperative"
    assert heuristic(4, 57344, 8192)[0].swap_ab  # decode on a wide layer: swapped, N/128 CTAs fill the GPU
    assert not heuristic(4, 2880, 4096)[0].swap_ab  # decode on a narrow layer: too few CTAs when swapped


def test_heuristic_counts_waves_in_the_gpus_sms() -> None:
    """The same reasoning on a DGX Spark's 48 SMs as on an RTX 5090's 170: a layer of 40 column tiles fills the
    first, not the second; without a device, sm_121a assumes 48 SMs and every other target 170."""
    spark = parse_target("sm_121a")
    for fmt in FORMATS:
        for m, n in ((1, 2880), (4, 5120), (64, 5760), (128, 2880), (300, 4096), (8192, 57344)):
            assert heuristic(m, n, 4096, fmt) == heuristic(m, n, 4096, fmt, None, 170)
            assert heuristic(m, n, 4096, fmt, spark) == heuristic(m, n, 4096, fmt, spark, 48)
    assert heuristic(4, 5120, 4096, "mxfp4", spark, 48)[0].swap_ab  # 40 CTAs: most of 48 SMs
    assert not heuristic(4, 5120, 4096, "mxfp4", spark, 170)[0].swap_ab  # 40 of 170: too few, not swapped
    # 64 < m <= 128: the 64-row tile while its 2 * 23 CTAs fit one wave
    assert heuristic(100, 2880, 4096, "mxfp4", spark, 48)[0].tile_m == 64
    assert heuristic(100, 2880, 4096, "mxfp4", spark, 40)[0].tile_m == 128


@pytest.fixture
def planner(monkeypatch: pytest.MonkeyPatch):
    """ops.mm_fp4 with an empty plan cache and a stand-in module loader (plans without building anything)."""
    from flashinfer_sm12x.ops import mm_fp4 as op

    class FakeModule:
        def workspace_bytes(self, m: int, n: int, k: int) -> int:
            return 0

    from flashinfer_sm12x.kernels import family
    from flashinfer_sm12x.kernels.mm_fp4 import FAMILY

    monkeypatch.setattr(family, "load_module", lambda spec: FakeModule())
    monkeypatch.setattr(FAMILY.modules, "_modules", {})
    monkeypatch.setattr(op, "_PLANS", {})
    return op


def test_plan_uses_the_sm_count_it_is_given(planner) -> None:
    op = planner
    spark = parse_target("sm_121a")
    p = op.Problem("mxfp4", 4, 5120, 4096, *(torch.empty(0),) * 4, None, torch.empty(4, 5120, dtype=torch.bfloat16))
    assert op.plan(p, target=spark).tactic == heuristic(4, 5120, 4096, "mxfp4", spark, 48)[0]
    assert op.plan(p, target=spark, sm_count=170).tactic == heuristic(4, 5120, 4096, "mxfp4", spark, 170)[0]
    assert op.plan(p, target=spark).tactic != op.plan(p, target=spark, sm_count=170).tactic


def test_proven_menus() -> None:
    from flashinfer_sm12x.jit.arch import parse_target
    from flashinfer_sm12x.kernels.mm_fp4 import CANDIDATES, PROVEN

    shipped = FAMILY.shipped

    pp128 = CANDIDATES[0]
    assert pp128 in shipped("mxfp4", parse_target("sm_120a"))
    assert pp128 not in shipped("mxfp4", parse_target("sm_121a"))  # mainloop spill on sm_121a
    assert shipped("mxfp4", parse_target("sm_90a")) == PROVEN["sm_120a"]["mxfp4"]  # emulation runs sm_120a's
    family = shipped("mxfp4", parse_target("sm_120f"))  # no sweep of its own: what is proven on both chips
    assert family and all(t in PROVEN["sm_120a"]["mxfp4"] and t in PROVEN["sm_121a"]["mxfp4"] for t in family)


def test_public_names() -> None:
    assert fs.mm_fp4 is mm_fp4 and fs.mm_mxfp8_mxfp4 is mm_mxfp8_mxfp4
    assert callable(fs.mxfp4_quantize)


def test_flashinfer_style_support_queries() -> None:
    assert mm_fp4.is_backend_supported("cutlass_sm12x", 120)
    assert mm_fp4.is_backend_supported("cutlass_sm12x", 121)
    assert not mm_fp4.is_backend_supported("cutlass_sm12x", 100)  # no SM100 kernels here
    assert not mm_fp4.is_backend_supported("cudnn")  # FlashInfer's names are delegated, not served here
    assert mm_fp4.is_compute_capability_supported(121) and not mm_fp4.is_compute_capability_supported(89)


def test_batch_invariant_pins_one_tactic_for_every_m(planner) -> None:
    """The plan under batch_invariant=True is BATCH_INVARIANT_TACTIC whatever M (no stream-K, no swap)."""
    from flashinfer_sm12x.kernels.mm_fp4 import BATCH_INVARIANT_TACTIC

    op = planner
    assert BATCH_INVARIANT_TACTIC.schedule != "streamk" and not BATCH_INVARIANT_TACTIC.swap_ab
    for target in ("sm_120a", "sm_121a", "sm_90a"):
        assert all(BATCH_INVARIANT_TACTIC in FAMILY.shipped(f, parse_target(target)) for f in ("mxfp4", "nvfp4"))
    for m in (1, 7, 64, 300, 8192):
        p = op.Problem("mxfp4", m, 4096, 4096, *(torch.empty(0),) * 4, None, torch.empty(m, 4096, dtype=torch.bfloat16))
        assert op.plan(p, batch_invariant=True, target=parse_target("sm_121a")).tactic == BATCH_INVARIANT_TACTIC
        chosen = op.plan(p, target=parse_target("sm_121a")).tactic
        assert chosen == heuristic(m, 4096, 4096, "mxfp4", parse_target("sm_121a"))[0]


def test_autotuner_runner_is_a_flashinfer_tunable_runner(operands: dict[str, torch.Tensor]) -> None:
    from flashinfer.autotuner import TunableRunner

    from flashinfer_sm12x.integrations.flashinfer_mm_fp4 import MmFp4Runner

    runner = MmFp4Runner()
    assert isinstance(runner, TunableRunner)
    inputs = [operands["a"], operands["b"], operands["a_descale"], operands["b_descale"], None, torch.bfloat16,
              None, 32, False, None]
    assert runner.get_valid_tactics(inputs) == list(range(len(FAMILY.shipped("mxfp4"))))
    with pytest.raises(ValueError, match="CUDA"):  # validated like the public API, before any launch
        runner.forward(inputs, tactic=0)


def test_autotuner_runner_lists_and_runs_the_device_menu(operands: dict[str, torch.Tensor],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """On a DGX Spark (sm_121a) the tuner's tactic indices cover sm_121a's menu and index the same order forward
    runs (they were sized from sm_120a's menu: NVFP4 has 10 tactics on sm_121a, 8 on sm_120a)."""
    from flashinfer_sm12x.integrations import flashinfer_mm_fp4 as integration
    from flashinfer_sm12x.jit.arch import DeviceFacts
    from flashinfer_sm12x.ops import mm_fp4 as op

    spark = parse_target("sm_121a")
    monkeypatch.setattr(integration, "_facts", lambda a: DeviceFacts(0, spark, 48))
    ran: list = []
    monkeypatch.setattr(op, "validate", lambda *args, **kw: "problem")
    monkeypatch.setattr(op, "run_tactic", lambda p, tactic, pdl: ran.append(tactic))
    inputs = [operands["a"], operands["b"], operands["a_descale"], operands["b_descale"], None, torch.bfloat16,
              None, 16, True, None]
    runner = integration.MmFp4Runner()
    indices = runner.get_valid_tactics(inputs)
    assert len(indices) == len(FAMILY.shipped("nvfp4", spark)) != len(FAMILY.shipped("nvfp4", parse_target("sm_120a")))
    for i in indices:
        runner.forward(inputs, tactic=i)
    m, n, k = operands["a"].shape[0], operands["b"].shape[1], operands["a"].shape[1] * 2
    assert ran == list(heuristic(m, n, k, "nvfp4", spark, 48))


@pytest.mark.parametrize("tactic", FAMILY.shipped("mxfp8_mxfp4", parse_target("sm_90a")), ids=lambda t: t.name)
def test_w4a8_emulated_spec_uses_the_emulated_w4a8_mainloop(tactic) -> None:
    """The emulated W4A8 build (sm_120a's W4A8 menu) includes the emulated atom and the W4A8 mainloop; the native
    one includes neither."""
    text = FAMILY.spec(parse_target("sm_90a"), "mxfp8_mxfp4", tactic, torch.bfloat16).sources[0].text
    assert "emulation/blockscaled_mma_sm90.cuh" in text and "mainloops/w4a8_emulated.cuh" in text
    assert "byte_tma.cuh" not in text
    native = FAMILY.spec(parse_target("sm_120a"), "mxfp8_mxfp4", tactic, torch.bfloat16).sources[0].text
    assert "emulation/" not in native and "w4a8_emulated.cuh" not in native


def test_family_without_an_emulated_build_of_a_format_refuses_it() -> None:
    import dataclasses

    from flashinfer_sm12x.errors import ArchError

    family = dataclasses.replace(FAMILY, emulated_formats=("mxfp4",))
    with pytest.raises(ArchError, match="no emulated"):
        family.spec(parse_target("sm_90a"), "nvfp4", family.shipped("nvfp4")[0], torch.bfloat16)
