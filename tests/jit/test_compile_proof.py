# SPDX-License-Identifier: Apache-2.0
"""Compile proof of the MXFP4 MMA probe: native block-scaled MMA in SASS for sm_120a / sm_121a, no GPU."""

from __future__ import annotations

import pytest

from flashinfer_sm12x.errors import ArchError, BuildError
from flashinfer_sm12x.jit.arch import Target, parse_target
from flashinfer_sm12x.jit.compile_proof import (
    SM120_SMEM_CAPACITY,
    KernelReport,
    _compile,
    _merge,
    compile_proof,
    compile_proof_for_arch,
    parse_ptxas,
    parse_sass,
)
from flashinfer_sm12x.jit.module import build_module
from flashinfer_sm12x.kernels.mma_probe import mma_probe_spec

pytestmark = pytest.mark.compile_proof


@pytest.mark.parametrize("arch", ["sm_120a", "sm_121a", "sm_120f"])
def test_probe_has_native_block_scaled_mma(arch: str) -> None:
    report = compile_proof(mma_probe_spec(parse_target(arch), k_tiles=2))
    kernel = report.require(instruction="OMMA.SF.16864.F32.E2M1.E2M1.E8", no_spills=True, no_mainloop_spills=True,
                            max_smem=SM120_SMEM_CAPACITY)
    assert kernel.count("OMMA.SF") == 2  # one per 64-wide k tile: nothing emulated, nothing dropped
    assert kernel.registers > 0 and kernel.stack_bytes == 0


def test_plain_sm120_is_refused_naming_the_suffix() -> None:
    with pytest.raises(ArchError, match="'a'/'f' suffix"):
        compile_proof_for_arch(mma_probe_spec(parse_target("sm_120a")), "sm_120")


def test_nvcc_itself_rejects_plain_sm120_and_we_explain() -> None:
    # Bypass our own arch check: what nvcc says for compute_120/sm_120, plus our hint.
    spec = mma_probe_spec(parse_target("sm_120a"))
    with pytest.raises(BuildError, match=r"sm_120a.*'a' suffix"):
        _compile(spec, "-gencode=arch=compute_120,code=sm_120", Target(12, 0, "a"), None)


def test_require_reports_missing_instruction() -> None:
    report = compile_proof(mma_probe_spec(parse_target("sm_120a")))
    with pytest.raises(AssertionError, match="no QMMA.SF"):
        report.require(instruction="QMMA.SF")


def test_probe_module_links_without_libcuda(cache_root) -> None:  # type: ignore[no-untyped-def]
    """The full module (tvm_ffi binding + kernel) builds and links on a machine with no driver."""
    artifact = build_module(mma_probe_spec(parse_target("sm_121a")))
    assert artifact.stat().st_size > 0


def test_parsers_on_known_text() -> None:
    log = (
        "ptxas info    : Compiling entry function '_Z1kv' for 'sm_120a'\n"
        "ptxas info    : Function properties for _Z1kv\n"
        "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 168 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]\n"
    )
    k = parse_ptxas(log)["_Z1kv"]
    assert (k.registers, k.static_smem, k.stack_bytes, k.spill_stores, k.spill_loads) == (168, 1024, 8, 4, 12)
    sass = (
        "\t\tFunction : _Z1kv\n"
        "        /*0010*/                   OMMA.SF.16864.F32.E2M1.E2M1.E8 R4, R8, R12, R4, R2, R3, URZ ;\n"
        "        /*0020*/              @!P0 BRA 0x40 ;\n"
    )
    code = parse_sass(sass)["_Z1kv"]
    assert [(a, op) for a, op, _ in code] == [(0x10, "OMMA.SF.16864.F32.E2M1.E2M1.E8"), (0x20, "BRA")]


def _kernel_from(sass: str) -> KernelReport:
    return _merge({}, parse_sass(sass))[0]


def test_mainloop_spills_counts_only_the_innermost_mma_loop() -> None:
    sass = "\n".join([
        "\t\tFunction : _Z1kv",
        "        /*0000*/                   STL [R1], R2 ;",  # prologue spill: allowed
        "        /*0010*/                   OMMA.SF.16864.F32.E2M1.E2M1.E8 R4, R8, R12, R4, R2, R3, URZ ;",
        "        /*0020*/                   LDL R3, [R1] ;",  # inside the k loop: a mainloop spill
        "        /*0030*/               @P0 BRA 0x10 ;",  # the k loop (backward branch over the MMA)
        "        /*0040*/                   STL [R1+0x4], R5 ;",  # epilogue, inside only the outer tile loop
        "        /*0050*/                   BRA 0x0 ;",  # the persistent tile loop
    ])
    kernel = _kernel_from(sass)
    assert kernel.mainloop_spills("OMMA.SF") == 1
    assert kernel.mainloop_spills("QMMA.SF") == 0  # no such loop


def test_out_of_line_stub_returns_are_not_loops() -> None:
    # ptxas places barrier try-wait retries after the last EXIT; their jump back into the body (here to the
    # peeled last MMA, over an epilogue LDL) is a return, not a loop. Only the real k loop (0x10..0x30) counts.
    sass = "\n".join([
        "\t\tFunction : _Z1kv",
        "        /*0000*/                   NOP ;",
        "        /*0010*/                   OMMA.SF.16864.F32.E2M1.E2M1.E8 R4, R8, R12, R4, R2, R3, URZ ;",
        "        /*0020*/                   IADD3 R3, PT, PT, R3, 0x1, RZ ;",
        "        /*0030*/               @P0 BRA 0x10 ;",  # the k loop
        "        /*0040*/                   OMMA.SF.16864.F32.E2M1.E2M1.E8 R4, R8, R12, R4, R2, R3, URZ ;",
        "        /*0050*/              @!P1 BRA 0x90 ;",  # to the try-wait stub
        "        /*0060*/                   LDL R3, [R1] ;",  # epilogue spill: not in the mainloop
        "        /*0070*/               @P2 BRA 0x0 ;",  # the tile loop
        "        /*0080*/                   EXIT ;",
        "        /*0090*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P1, [R2], R3 ;",
        "        /*00a0*/              @!P1 BRA 0x90 ;",
        "        /*00b0*/                   BRA 0x40 ;",  # the stub's return: not a loop
    ])
    kernel = _kernel_from(sass)
    assert kernel.mainloop_spills("OMMA.SF") == 0
    # The same code without the EXIT (no stub boundary known): the return jump is taken for a loop.
    kernel = _kernel_from(sass.replace("EXIT", "NOP"))
    assert kernel.mainloop_spills("OMMA.SF") == 1
