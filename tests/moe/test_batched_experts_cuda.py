# SPDX-License-Identifier: Apache-2.0
"""The experts on per-expert batched rows through the kernels (`moe.batched.batched_experts(impl="kernels")`: quantize,
GEMM1 with the fused SwiGLU + quantize epilogue, GEMM2, both bounded by expert_num_tokens) against the reference
implementation on the same device, and against `fused_moe`'s kernels on each expert's rows. On an SM90 GPU the SM12x
templates run through the emulated MMA atom; on an SM12x GPU natively. The CPU twin is test_batched_experts.py."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.moe.batched import batched_experts
from flashinfer_sm12x.moe.fused_moe import fused_moe
from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
from flashinfer_sm12x.testing.moe_cases import make_weights

pytestmark = pytest.mark.cuda
H, INTER = 256, 256


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """SM12x natively; SM90 through the emulated MMA atom (the `emulate` fixture's variable); other GPUs skip."""
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) == (9, 0):
        monkeypatch.setenv("FLASHINFER_SM12X_EMULATE", "1")
    elif major != 12:
        pytest.skip(f"needs an SM12x GPU, or an SM90 GPU for the emulation; got sm_{major}{minor}")


@pytest.mark.parametrize("act", ["mxfp4", "mxfp8"])
@pytest.mark.parametrize(("num_e", "m", "counts"), [(4, 5, [3, 0, 5, 1]), (8, 64, [64, 0, 17, 1, 64, 33, 0, 2]),
                                                    (3, 200, [200, 129, 0])])
def test_kernels_match_the_reference(gpu: None, act: str, num_e: int, m: int, counts: list[int]) -> None:
    w = prepare_gpt_oss_weights(**{k: v.cuda() for k, v in make_weights(num_e, H, INTER).items()}, act=act)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(num_e, m, H, generator=g).bfloat16().cuda()
    n = torch.tensor(counts, dtype=torch.int32, device="cuda")
    for e, c in enumerate(counts):  # stale rows past the counts, as DeepEP leaves them: never read
        x[e, c:] = float("nan")
    got = batched_experts(x, n, w, impl="kernels", out_dtype=torch.float32)
    ref = batched_experts(x, n, w, impl="reference", out_dtype=torch.float32)
    torch.cuda.synchronize()
    for e, c in enumerate(counts):
        if not c:
            continue
        scale = float(ref[e, :c].abs().max())
        assert torch.isfinite(got[e, :c]).all(), e
        # Same quantized operands; the kernels' GEMM1 rounds to bf16 before its fused activation (as fused_moe's).
        assert float((got[e, :c] - ref[e, :c]).abs().max()) <= 2.0 ** -6 * scale, e
        ids = torch.full((c, 1), e, dtype=torch.int32, device="cuda")
        one = fused_moe(x[e, :c].contiguous(), (ids, torch.ones(c, 1, device="cuda")), w, impl="kernels",
                        out_dtype=torch.float32)
        assert float((got[e, :c] - one).abs().max()) <= 2.0 ** -6 * scale, e


def test_kernels_are_graph_capturable(gpu: None) -> None:
    """No host synchronisation: a captured call replays with new rows and counts."""
    num_e, m = 4, 32
    w = prepare_gpt_oss_weights(**{k: v.cuda() for k, v in make_weights(num_e, H, INTER).items()}, act="mxfp8")
    x = torch.randn(num_e, m, H, device="cuda").bfloat16()
    n = torch.tensor([32, 0, 7, 1], dtype=torch.int32, device="cuda")
    out = torch.empty(num_e, m, H, dtype=torch.bfloat16, device="cuda")
    batched_experts(x, n, w, impl="kernels", out=out)  # warm-up: modules loaded, launchers validated
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        batched_experts(x, n, w, impl="kernels", out=out)
    x.copy_(torch.randn_like(x))
    n.copy_(torch.tensor([5, 32, 0, 9], dtype=torch.int32))
    graph.replay()
    eager = batched_experts(x, n, w, impl="kernels")
    torch.cuda.synchronize()
    for e, c in enumerate([5, 32, 0, 9]):
        assert torch.equal(out[e, :c], eager[e, :c]), e
