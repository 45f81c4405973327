# SPDX-License-Identifier: Apache-2.0
"""Every FlashInfer name this package uses that FlashInfer does not promise to keep, in one place.

Tested FlashInfer releases: 0.7.2.post1 (vLLM 0.33's pin) and 0.7.4 (the newest the `<0.8` pin allows). CI runs
the CPU suite against both. Public names (`flashinfer.mm_fp4`, `flashinfer.autotuner.AutoTuner`,
`flashinfer.utils.backend_requirement`, ...) are used directly where they are needed; the private ones below are
looked up here only, each behind a function that fails with a message naming the name and the version, and
`tests/integrations/test_flashinfer_compat.py` checks them against the installed FlashInfer.

What no longer depends on a private name: the autotuner workspace of `backend="auto"` is our own buffer per
(device, stream), sized like FlashInfer's (0.7.2 kept it in `gemm_base._get_cache_buf`, 0.7.4 moved it to
`_get_stream_cache_buf`).
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any

import torch

TESTED_VERSIONS = ("0.7.2.post1", "0.7.4")

# FlashInfer backend name -> its private mm_fp4 requirement check in flashinfer.gemm.gemm_base.
FP4_REQUIREMENTS = {
    "cudnn": "_cudnn_gemm_fp4_requirement",
    "b12x": "_b12x_gemm_fp4_requirement",
    "cutlass": "_cutlass_gemm_fp4_requirement",
    "cute-dsl": "_cute_dsl_gemm_fp4_requirement",
}
# The private runner factories and constants of flashinfer.gemm.gemm_base that backend="auto" builds runners with.
FP4_RUNNER_FACTORIES = {
    "cudnn": "_cudnn_gemm_fp4_runner",
    "b12x": "_b12x_gemm_fp4_runner",
    "cutlass": "get_cutlass_fp4_gemm_module",
    "cute-dsl": "_cute_dsl_gemm_fp4_runner",
}
TUNING_CONFIG_128X4 = "_MM_FP4_TUNING_CONFIG_128x4"
WORKSPACE_SIZE = "DEFAULT_WORKSPACE_SIZE"
_DEFAULT_WORKSPACE_BYTES = 40 * 1024 * 1024  # 0.7.4's value, used if the constant disappears


class FlashInferNameMissing(AttributeError):
    """A FlashInfer name this package relies on is absent from the installed release."""


def installed_version() -> str | None:
    """The installed flashinfer-python version, or None when it is not installed."""
    try:
        from importlib.metadata import version

        return version("flashinfer-python")
    except Exception:
        return None


def gemm_base() -> Any:
    """`flashinfer.gemm.gemm_base` (imported lazily: importing FlashInfer takes seconds)."""
    from flashinfer.gemm import gemm_base as module

    return module


def private(name: str) -> Any:
    """A private attribute of flashinfer.gemm.gemm_base, or FlashInferNameMissing naming it and the version."""
    value = getattr(gemm_base(), name, None)
    if value is None:
        raise FlashInferNameMissing(
            f"flashinfer.gemm.gemm_base.{name} is missing from flashinfer-python {installed_version()} "
            f"(flashinfer_sm12x is tested with {', '.join(TESTED_VERSIONS)})"
        )
    return value


def make_fp4_runner(name: str, cc: tuple[int, int], out_dtype: torch.dtype, use_nvfp4: bool,
                    enable_pdl: bool) -> Any:
    """FlashInfer's autotuner runner for mm_fp4 backend `name` on compute capability `cc`."""
    major, minor = cc
    factory = private(FP4_RUNNER_FACTORIES[name])
    if name == "cudnn":
        return factory(fp4_tuning_config())
    if name == "cutlass":
        return factory(major, minor).cutlass_fp4_gemm_runner()
    return factory(major, minor, enable_pdl, out_dtype, use_nvfp4)  # b12x, cute-dsl


def fp4_tuning_config() -> Any:
    """FlashInfer's mm_fp4 tuning config for 128x4 scales (M bucketing, scale/out/workspace constraints)."""
    return private(TUNING_CONFIG_128X4)


_WORKSPACES: dict[tuple[torch.device, int], torch.Tensor] = {}


def autotuner_workspace(device: torch.device) -> torch.Tensor:
    """A scratch buffer for FlashInfer's mm_fp4 runners, one per (device, current stream), as FlashInfer keeps its
    own (launches on one stream are ordered; different streams get different buffers)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    buf = _WORKSPACES.get(key)
    if buf is None:
        size = getattr(gemm_base(), WORKSPACE_SIZE, _DEFAULT_WORKSPACE_BYTES)
        buf = _WORKSPACES[key] = torch.empty(size, dtype=torch.uint8, device=device)
    return buf


@functools.cache
def mm_fp4_backend_names() -> tuple[str, ...]:
    """The backend names the installed `flashinfer.mm_fp4` accepts (its `backend` Literal), "auto" excluded."""
    import flashinfer

    annotation = inspect.signature(flashinfer.mm_fp4).parameters["backend"].annotation
    names = typing.get_args(annotation)
    if not names:
        raise FlashInferNameMissing(f"flashinfer.mm_fp4's backend parameter has no Literal of names in "
                                    f"flashinfer-python {installed_version()}")
    return tuple(n for n in names if n != "auto")


@functools.cache
def mm_fp4_parameters() -> frozenset[str]:
    """The parameter names of the installed `flashinfer.mm_fp4` (0.7.4 added `batch_invariant`)."""
    import flashinfer

    return frozenset(inspect.signature(flashinfer.mm_fp4).parameters)
