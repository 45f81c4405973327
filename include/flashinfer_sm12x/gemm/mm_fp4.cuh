// SPDX-License-Identifier: Apache-2.0
// mm_fp4, the dense block-scaled GEMM for SM120/SM121:  D[M,N] = alpha * (A[M,K] . SFA) x (B[N,K] . SFB)^T.
// Configurations: gemm::MmFp4Config<Format, ElementD, TileM, TileN, TileK, Schedule, Emulated, SwapAB>
// (gemm/config.cuh, namespace flashinfer_sm12x::gemm, shared with grouped_mm_fp4); launch: gemm::run<Config>(Problem,
// workspace, stream, pdl) (gemm/launcher.cuh), or mm_fp4::run_cached<Config> with the kernel parameters cached per
// shape and addresses (gemm/cached_launch.cuh; what the binding uses). A rendered source (jit/mm_fp4.cu.jinja) adds
// the mainloop and emulation headers its configuration needs.
#pragma once

#include "flashinfer_sm12x/gemm/cached_launch.cuh"
#include "flashinfer_sm12x/gemm/config.cuh"
#include "flashinfer_sm12x/gemm/launcher.cuh"
