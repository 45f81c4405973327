"""Rung 3 for the fused MoE: the whole op (routing, padding, both grouped MXFP4 GEMMs through the emulated MMA
atom, bias, swiglu_oai, re-quantization, finalize) on an H100 against the float64 GPT-OSS reference, at GPT-OSS
sizes (hidden = intermediate = 2880, padded to 2944 inside), E in {32, 128}, top-4, T in {1, 3, 64, 1000, 8192};
skewed routing; CUDA graphs."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.moe.fused_moe import fused_moe
from flashinfer_sm12x.moe.reference import gpt_oss_moe_reference
from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
from tests.moe.moe_cases import make_inputs, make_weights

pytestmark = pytest.mark.emulation
H = INTER = 2880
_WEIGHTS: dict[int, tuple] = {}


@pytest.fixture(autouse=True)
def _emulate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHINFER_SM12X_EMULATE", "1")


def weights(num_e: int, act: str = "mxfp4", **layout: bool) -> tuple[dict, object]:
    key = (num_e, act, tuple(sorted(layout.items())))
    if key not in _WEIGHTS:
        _WEIGHTS.clear()  # one expert set on the GPU at a time
        raw = {k: v.cuda() for k, v in make_weights(num_e, H, INTER).items()}
        _WEIGHTS[key] = (raw, prepare_gpt_oss_weights(**raw, pad_to=128, act=act, **layout))
    return _WEIGHTS[key]


def rel_l2(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).norm() / ref.norm())


# bf16 GEMM outputs feed an MXFP4 re-quantization, which flips a few elements against the float64 reference:
# compare in norm (elementwise maxima are dominated by those flips).
TOL = 0.02


def run_fused_case(num_e: int, num_t: int, act: str = "mxfp4") -> None:
    raw, w = weights(num_e, act)
    hidden, logits = make_inputs(num_t, H, num_e)
    got = fused_moe(hidden.cuda(), logits.cuda(), w, top_k=4)
    ref = gpt_oss_moe_reference(hidden.cuda(), logits.cuda(), **raw, top_k=4, act_quant=act)
    assert got.isfinite().all() and rel_l2(got, ref) < TOL


@pytest.mark.parametrize(("num_e", "num_t"), [(32, 1), (32, 3), (32, 64), (32, 1000), (32, 8192), (128, 1), (128, 3),
                                              (128, 64), (128, 1000), (128, 8192)])
def test_fused_moe_matches_reference(num_e: int, num_t: int) -> None:
    run_fused_case(num_e, num_t)


def test_skewed_routing_one_expert_gets_every_token() -> None:
    raw, w = weights(32)
    hidden, _ = make_inputs(300, H, 32)
    ids = torch.tensor([[5, 0, 1, 2]], dtype=torch.int32).repeat(300, 1).cuda()
    topk = torch.full((300, 4), 0.25, device="cuda")
    got = fused_moe(hidden.cuda(), (ids, topk), w)
    ref = gpt_oss_moe_reference(hidden.cuda(), (ids, topk), **raw, act_quant="mxfp4")
    assert rel_l2(got, ref) < TOL


def test_cuda_graph_capture_and_replay() -> None:
    raw, w = weights(32)
    hidden, logits = make_inputs(3, H, 32)
    hidden, logits = hidden.cuda(), logits.cuda()
    eager = fused_moe(hidden, logits, w, top_k=4)  # builds and warms up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fused_moe(hidden, logits, w, top_k=4, validate_ids=False)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, eager, rtol=0, atol=0)
    hidden.mul_(-1)  # new inputs in place: the replay follows them
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, fused_moe(hidden, logits, w, top_k=4), rtol=0, atol=0)
