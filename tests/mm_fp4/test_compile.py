# SPDX-License-Identifier: Apache-2.0
"""Rung 2 in CI: one mm_fp4 config per (schedule x format family) compiled for sm_120a and sm_121a,
with the native block-scaled MMA in SASS, no spills, shared memory <= 101,376 B, and the mainloop's shape: at least
MMAS_UNDER_WAIT MMAs between every pipeline-barrier try-wait and its check, no run of more than MAX_MMA_FREE
instructions without an MMA (what CUTLASS's own SM120 collective achieves; the 64-row mainloop had 0 and 24 before
its last k-tile was peeled). The full menu is scripts/compile_sweep.py (docs/compile_proofs.md)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.jit.compile_proof import (
    SM120_SMEM_CAPACITY,
    CompileReport,
    compile_proof,
    mainloop_requirements,
)
from flashinfer_sm12x.kernels.family import Tactic
from flashinfer_sm12x.kernels.mm_fp4 import FAMILY

pytestmark = [pytest.mark.compile_proof, pytest.mark.slow]

SUBSET = [
    ("sm_120a", "mxfp4", torch.bfloat16, Tactic("pingpong", 128, 128, 128)),
    ("sm_121a", "mxfp4", torch.bfloat16, Tactic("pingpong", 128, 64, 128)),
    ("sm_121a", "mxfp4", torch.float16, Tactic("cooperative", 128, 128, 128)),
    ("sm_121a", "mxfp4", torch.bfloat16, Tactic("streamk", 128, 128, 128)),
    ("sm_120a", "nvfp4", torch.bfloat16, Tactic("cooperative", 128, 128, 128)),
    ("sm_121a", "mxfp8_mxfp4", torch.bfloat16, Tactic("cooperative", 128, 128, 128)),
    ("sm_120a", "mxfp8_mxfp4", torch.bfloat16, Tactic("pingpong", 128, 128, 128)),
    ("sm_121a", "nvfp4", torch.bfloat16, Tactic("pingpong", 128, 32, 128, swap_ab=True)),
    ("sm_120a", "mxfp4", torch.bfloat16, Tactic("pingpong", 64, 128, 128)),  # our 64-row mainloop
    ("sm_121a", "nvfp4", torch.float16, Tactic("pingpong", 64, 128, 128)),
]
IDS = [f"{a}-{f}-{str(o).split('.')[-1]}-{t.name}" for a, f, o, t in SUBSET]


@pytest.fixture(scope="module")
def reports() -> dict[str, CompileReport | Exception]:
    def prove(item: tuple) -> CompileReport | Exception:
        arch, fmt, out, tactic = item
        try:
            return compile_proof(FAMILY.spec(parse_target(arch), fmt, tactic, out))
        except Exception as exc:  # reported by the test of that config
            return exc

    with ThreadPoolExecutor(max_workers=2) as pool:  # two CUTLASS TUs at a time: ~11 GB of host memory
        return dict(zip(IDS, pool.map(prove, SUBSET), strict=True))


@pytest.mark.parametrize(("arch", "fmt", "out", "tactic"), SUBSET, ids=IDS)
def test_config_compiles_with_native_mma(reports: dict, arch: str, fmt: str, out: torch.dtype,
                                         tactic: Tactic) -> None:
    report = reports[IDS[SUBSET.index((arch, fmt, out, tactic))]]
    if isinstance(report, Exception):
        raise report
    instruction = FAMILY.required_instruction(fmt, parse_target(arch))
    kernel = report.require(instruction=instruction, no_mainloop_spills=True, max_smem=SM120_SMEM_CAPACITY,
                            **mainloop_requirements(tactic.tile_n, fmt))
    assert report.dynamic_smem and report.stages and report.stages >= 2
    assert kernel.count(instruction) >= 1
    assert kernel.count("HMMA") == 0  # nothing emulated in a native build


def test_w4a8_emulated_build_compiles_for_sm90a() -> None:
    """W4A8 for sm_90a: the f16 MMA of the emulated atom, e4m3 -> f16 conversions and the emulated unpacking ldmatrix
    (16-bit shared loads) in SASS, no block-scaled MMA, shared memory within the SM120 budget."""
    target = parse_target("sm_90a")
    report = compile_proof(FAMILY.spec(target, "mxfp8_mxfp4", Tactic("cooperative", 128, 128, 128), torch.bfloat16))
    kernel = report.require(instruction=FAMILY.required_instruction("mxfp8_mxfp4", target), no_mainloop_spills=False,
                            max_smem=SM120_SMEM_CAPACITY)
    assert kernel.count("HMMA.16816.F32") >= 1 and kernel.count("HMMA.16816.F32.BF16") == 0
    assert kernel.count("F2FP.F16.E4M3") >= 1 and kernel.count("LDS.U16") >= 1
    assert kernel.count("QMMA") == 0 and kernel.count("OMMA") == 0


def test_m64_emulated_build_keeps_its_fragments_out_of_local_memory() -> None:
    """The 64-row mainloop for sm_90a: at most a few spilled registers on the stack, never the fragment arrays.

    With the peeled last k-tile the sm_90a build put the consumer's fragments in local memory (an 880-byte frame, no
    spills), where CuTe's byte-typed fp4 fragments took misaligned 4-byte stores: "misaligned address" on the H100.
    The emulated build keeps one k-tile body (gemm/mainloops/m64_pingpong.cuh); this bounds its frame."""
    target = parse_target("sm_90a")
    report = compile_proof(FAMILY.spec(target, "mxfp4", Tactic("pingpong", 64, 128, 128), torch.bfloat16))
    kernel = report.require(instruction=FAMILY.required_instruction("mxfp4", target), no_mainloop_spills=False,
                            max_smem=SM120_SMEM_CAPACITY)
    assert kernel.stack_bytes <= 128, (kernel.stack_bytes, kernel.spill_stores)
