# SPDX-License-Identifier: Apache-2.0
"""Rung 4: mm_fp4 natively on an SM120/SM121 GPU, every shipped tactic and format, against the reference.
Skipped without such a GPU (and then not counted as passing)."""

from __future__ import annotations

import pytest
import torch

import flashinfer_sm12x as fs
from flashinfer_sm12x.jit.arch import target_for_capability
from flashinfer_sm12x.kernels.mm_fp4 import CANDIDATES, FAMILY, FORMATS, applicable
from flashinfer_sm12x.testing.mm_fp4_cases import SHAPES, make_operands, prebuild, run_and_check, selected_cases

pytestmark = pytest.mark.sm12x


@pytest.fixture(scope="module", autouse=True)
def _prebuilt(request: pytest.FixtureRequest) -> None:
    target = target_for_capability(torch.cuda.get_device_capability())
    cases = [(f, t, o) for f in FORMATS for t in FAMILY.shipped(f, target) for o in (torch.bfloat16, torch.float16)]
    prebuild(selected_cases(request, cases), target)


@pytest.mark.parametrize(("fmt", "tactic"), [(f, t) for f in FORMATS for t in CANDIDATES if applicable(f, t)],
                         ids=lambda v: v if isinstance(v, str) else v.name)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_tactic_matches_reference(fmt: str, tactic, out_dtype: torch.dtype, shape: tuple[int, int, int]) -> None:
    if tactic not in FAMILY.shipped(fmt, target_for_capability(torch.cuda.get_device_capability())):
        pytest.skip(f"{tactic.name} is not in the proven {fmt} menu for this GPU's target")
    m, n, k = shape
    run_and_check(fmt, tactic, out_dtype, m, n, k, with_alpha=(m % 2 == 1), seed=m * 7 + k)


@pytest.mark.parametrize("m", [1, 300])
def test_auto_backend_and_flashinfer_signature(m: int) -> None:
    ops = make_operands("mxfp4", m, 256, 1024, seed=5)
    out = fs.mm_fp4(ops["a"], ops["b"], ops["a_descale"], ops["b_descale"], None, torch.bfloat16, None, 32, False,
                    "auto", False, True)
    assert out.shape == (m, 256) and not out.isnan().any()


def test_cuda_graph_capture_and_replay() -> None:
    ops = make_operands("mxfp4", 128, 256, 1024, seed=4)
    args = (ops["a"], ops["b"], ops["a_descale"], ops["b_descale"])
    eager = fs.mm_fp4(*args, block_size=32, use_nvfp4=False)
    out = torch.empty_like(eager)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fs.mm_fp4(*args, out=out, block_size=32, use_nvfp4=False)
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
