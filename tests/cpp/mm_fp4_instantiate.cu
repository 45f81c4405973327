// Compile check for one mm_fp4 configuration (no main, no __global__ of its own): instantiating
// run<Config> makes nvcc compile the CUTLASS kernel. Pick the config with -D:
//   FLASHINFER_SM12X_EMULATE   Emulated = true (build for sm_90a)
//   MMFP4_FORMAT               Mxfp4 | Nvfp4 | Mxfp8Mxfp4        (default Mxfp4)
//   MMFP4_OUT                  cutlass::bfloat16_t | cutlass::half_t (default bf16)
//   MMFP4_SCHED                Pingpong | Cooperative | StreamK  (default Pingpong)
//   MMFP4_TILE_M/N/K           (default 128/128/128)
#include "flashinfer_sm12x/mm_fp4.cuh"

#ifndef MMFP4_FORMAT
#define MMFP4_FORMAT Mxfp4
#endif
#ifndef MMFP4_OUT
#define MMFP4_OUT cutlass::bfloat16_t
#endif
#ifndef MMFP4_SCHED
#define MMFP4_SCHED Pingpong
#endif
#ifndef MMFP4_TILE_M
#define MMFP4_TILE_M 128
#endif
#ifndef MMFP4_TILE_N
#define MMFP4_TILE_N 128
#endif
#ifndef MMFP4_TILE_K
#define MMFP4_TILE_K 128
#endif
#ifdef FLASHINFER_SM12X_EMULATE
#define MMFP4_EMULATED true
#else
#define MMFP4_EMULATED false
#endif

namespace fm = flashinfer_sm12x::mm_fp4;
using Config = fm::MmFp4Config<fm::MMFP4_FORMAT, MMFP4_OUT, MMFP4_TILE_M, MMFP4_TILE_N, MMFP4_TILE_K,
                               fm::MMFP4_SCHED, MMFP4_EMULATED>;

// Make the numbers visible in the compile log.
template <int Smem, int Stages> struct ShowSmemAndStages;
#ifdef MMFP4_SHOW
ShowSmemAndStages<fm::smem_bytes<Config>(), Config::kStages> show;
#endif
static_assert(fm::smem_bytes<Config>() <= 101376, "smem");

size_t mm_fp4_instantiated_workspace(fm::Problem const& p) { return fm::workspace_bytes<Config>(p); }
cudaError_t mm_fp4_instantiated_run(fm::Problem const& p, void* ws, cudaStream_t s) {
  return fm::run<Config>(p, ws, s);
}
int mm_fp4_instantiated_smem() { return fm::smem_bytes<Config>(); }
int mm_fp4_instantiated_stages() { return Config::kStages; }

// {SharedStorage bytes, stages} in the cubin's .nv.global.init, readable with `cuobjdump -elf`.
__device__ int mm_fp4_info[2] = {fm::smem_bytes<Config>(), Config::kStages};
