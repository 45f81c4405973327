"""Our mm_fp4 inside FlashInfer's autotuner: one `choose_one("fp4_gemm", ...)` over our tactics and FlashInfer's
own SM12x FP4 backends (cudnn, b12x, and cutlass for NVFP4), with the inputs list and tuning config that
`flashinfer.mm_fp4` uses, so results land in the same autotuner cache.

FlashInfer keeps its runner factories and requirement checks private (`flashinfer.gemm.gemm_base`); we use the
0.7.x names (the pin is `flashinfer-python>=0.7.2.post1,<0.8`) and a backend whose factory or check is missing
or fails is left out of the comparison, with the reason kept in `skipped`.

Without `with flashinfer.autotune():` the tuner returns its fallback, runners[0] with tactic -1: ours, with our
heuristic tile. Inside it, every runner's tactics are timed and the winner is cached per shape bucket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# FlashInfer backend name -> (requirement check, factory) names in flashinfer.gemm.gemm_base (0.7.x).
_FLASHINFER_FP4_BACKENDS = {
    "cudnn": "_cudnn_gemm_fp4_requirement",
    "b12x": "_b12x_gemm_fp4_requirement",
    "cutlass": "_cutlass_gemm_fp4_requirement",
}


@dataclass
class Candidates:
    runners: list[Any]  # ours first (the tuner's fallback)
    names: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


def _gemm_base() -> Any:
    from flashinfer.gemm import gemm_base

    return gemm_base


def tuning_config() -> Any:
    """FlashInfer's mm_fp4 config for 128x4 scales (M bucketing, scale/out/workspace constraints)."""
    return _gemm_base()._MM_FP4_TUNING_CONFIG_128x4


def _make_runner(name: str, gb: Any, cc: tuple[int, int], out_dtype: torch.dtype, use_nvfp4: bool,
                 enable_pdl: bool) -> Any:
    major, minor = cc
    if name == "cudnn":
        return gb._cudnn_gemm_fp4_runner(tuning_config())
    if name == "b12x":
        return gb._b12x_gemm_fp4_runner(major, minor, enable_pdl, out_dtype, use_nvfp4)
    return gb.get_cutlass_fp4_gemm_module(major, minor).cutlass_fp4_gemm_runner()


# FlashInfer's checks and runner construction cost far more than a decode GEMM: once per problem class.
_CACHE: dict[tuple, Candidates] = {}


def _cache_key(args: tuple, cc: tuple[int, int], enable_pdl: bool) -> tuple:
    a, b = args[0], args[1]
    return (cc, a.dtype, tuple(b.shape), args[5], args[7], args[8], args[10], enable_pdl, args[4] is None)


def candidates(args: tuple, cc: tuple[int, int], ours: Any, enable_pdl: bool = True) -> Candidates:
    """Runners for one mm_fp4 call (cached per problem class, M excluded). `args` are flashinfer.mm_fp4's
    positional arguments: (a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, use_8x4_sf_layout,
    backend, use_nvfp4)."""
    key = _cache_key(args, cc, enable_pdl)
    if key not in _CACHE:
        _CACHE[key] = _find_candidates(args, cc, ours, enable_pdl)
    return _CACHE[key]


def _find_candidates(args: tuple, cc: tuple[int, int], ours: Any, enable_pdl: bool) -> Candidates:
    result = Candidates([ours], ["cutlass_sm12x"])
    try:
        gb = _gemm_base()
    except Exception as exc:  # FlashInfer missing or broken: ours alone
        result.skipped["flashinfer"] = f"not importable: {exc}"
        return result
    out_dtype, use_nvfp4 = args[5], args[10]
    for name, check_name in _FLASHINFER_FP4_BACKENDS.items():
        check = getattr(gb, check_name, None)
        if check is None:
            result.skipped[name] = f"flashinfer.gemm.gemm_base.{check_name} not found"
            continue
        try:
            supported_cc = getattr(check, "is_compute_capability_supported", lambda _cc: False)
            if not supported_cc(cc[0] * 10 + cc[1]):
                result.skipped[name] = f"not for compute capability {cc[0]}.{cc[1]}"
                continue
            checked = (*args[:9], name, *args[10:])
            if not check(*checked):
                result.skipped[name] = "its requirement check declined this problem"
                continue
            result.runners.append(_make_runner(name, gb, cc, out_dtype, use_nvfp4, enable_pdl))
            result.names.append(name)
        except Exception as exc:  # a backend that cannot serve this problem here is not compared
            result.skipped[name] = f"{type(exc).__name__}: {exc}"
    return result


def choose_and_run(args: tuple, cc: tuple[int, int], ours: Any, enable_pdl: bool = True) -> tuple[str, int]:
    """Pick (runner, tactic) with FlashInfer's AutoTuner and run it into `out` (args[6], allocated by the caller).
    Returns the chosen backend's name and tactic."""
    from flashinfer.autotuner import AutoTuner

    a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, _, _, use_nvfp4 = args
    gb = _gemm_base()
    workspace = gb._get_cache_buf("mm_fp4_workspace", gb.DEFAULT_WORKSPACE_SIZE, a.device)  # FlashInfer's own
    found = candidates(args, cc, ours, enable_pdl)
    inputs = [a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, use_nvfp4, workspace]
    runner, tactic = AutoTuner.get().choose_one("fp4_gemm", found.runners, tuning_config(), inputs)
    runner(inputs=inputs, tactic=tactic)
    return found.names[found.runners.index(runner)], tactic
