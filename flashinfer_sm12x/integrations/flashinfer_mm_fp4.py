# SPDX-License-Identifier: Apache-2.0
"""`mm_fp4` with FlashInfer's signature: our SM120/SM121 kernels as one more backend, FlashInfer's own backends by
delegation, and `backend="auto"` through FlashInfer's autotuner.

Backends
- "cutlass_sm12x": ours (ops/mm_fp4.py: validate -> plan -> run).
- "auto": ours, or, inside `with flashinfer.autotune():`, whichever of our tactics and FlashInfer's SM12x FP4
  runners (cudnn, b12x, cute-dsl, cutlass; those whose requirement check accepts the problem) is fastest. The
  tuner runs one `choose_one("fp4_gemm", ...)` with the inputs list and tuning config `flashinfer.mm_fp4` uses, so
  results land in the same autotuner cache; untuned, its fallback is runners[0], ours.
- any other name the installed `flashinfer.mm_fp4` accepts: passed to it unchanged, by keyword.

`batch_invariant=True` (FlashInfer 0.7.4's flag) on our backends pins one tactic for every M (no split-K / stream-K,
no swapped A/B: kernels/mm_fp4.py BATCH_INVARIANT_TACTIC), so a row's bits do not depend on the number of rows or
the row's position; the autotuner is bypassed. `skip_check` (accepted by FlashInfer's decorated functions) is
passed on when delegating; our own checks are cheap and always run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ArchError
from ..jit.arch import DeviceFacts, device_facts
from ..kernels.family import Tactic
from ..kernels.mm_fp4 import heuristic
from ..ops import mm_fp4 as op
from ..ops.mm_fp4 import OURS
from . import flashinfer_compat as compat

SUPPORTED_CC = (120, 121, 90)  # 90: only through the emulated MMA atom (FLASHINFER_SM12X_EMULATE=1)


def _runner_base() -> type:
    try:
        from flashinfer.autotuner import TunableRunner

        return TunableRunner
    except Exception:  # FlashInfer absent or not importable here: a plain base keeps the API usable
        return object


class MmFp4Runner(_runner_base()):  # type: ignore[misc]
    """FlashInfer autotuner runner over our tactics, with `flashinfer.mm_fp4`'s runners' inputs list
    ([a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, use_nvfp4, workspace]), so one
    `AutoTuner.choose_one("fp4_gemm", ...)` compares our tactics with cudnn, b12x, cute-dsl and cutlass."""

    def __init__(self, enable_pdl: bool = True) -> None:
        self.enable_pdl = enable_pdl

    @staticmethod
    def tactics(inputs: list[Any]) -> tuple[Tactic, ...]:
        """Our tactics for these inputs in the heuristic's order on their device: the list the tuner indexes, in
        `get_valid_tactics` and `forward` alike (a DGX Spark's sm_121a menu differs from sm_120a's)."""
        a, b = inputs[0], inputs[1]
        facts = _facts(a)
        return heuristic(a.shape[0], b.shape[1], a.shape[1] * 2, "nvfp4" if inputs[8] else "mxfp4",
                         facts.target if facts else None, facts.sm_count if facts else None)

    def get_valid_tactics(self, inputs: list[Any], profile: Any = None) -> list[int]:
        return list(range(len(self.tactics(inputs))))

    def forward(self, inputs: list[Any], tactic: int = -1, do_preparation: bool = False, **kwargs: Any) -> Any:
        a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, use_nvfp4 = inputs[:9]
        p = op.validate(a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, False, use_nvfp4)
        return op.run_tactic(p, self.tactics(inputs)[max(tactic, 0)], kwargs.get("enable_pdl", self.enable_pdl))


def _facts(a: Any) -> DeviceFacts | None:
    """The device facts of a CUDA operand; None for others (their call fails validation before any launch)."""
    return device_facts(a.device) if isinstance(a, torch.Tensor) and a.is_cuda else None


@dataclass
class Candidates:
    runners: list[Any]  # ours first (the tuner's fallback)
    names: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


# FlashInfer's checks and runner construction cost far more than a decode GEMM: once per problem class.
_CANDIDATES: dict[tuple, Candidates] = {}


def candidates(args: tuple, cc: tuple[int, int], ours: Any, enable_pdl: bool = True) -> Candidates:
    """Runners for one mm_fp4 call, cached per problem class (M excluded). `args` are flashinfer.mm_fp4's
    positional arguments: (a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, use_8x4_sf_layout,
    backend, use_nvfp4)."""
    a, b = args[0], args[1]
    key = (cc, a.dtype, tuple(b.shape), args[5], args[7], args[8], args[10], enable_pdl, args[4] is None)
    found = _CANDIDATES.get(key)
    if found is None:
        found = _CANDIDATES[key] = _find_candidates(args, cc, ours, enable_pdl)
    return found


def _find_candidates(args: tuple, cc: tuple[int, int], ours: Any, enable_pdl: bool) -> Candidates:
    result = Candidates([ours], [OURS])
    out_dtype, use_nvfp4 = args[5], args[10]
    for name, check_name in compat.FP4_REQUIREMENTS.items():
        try:
            check = compat.private(check_name)
            supported_cc = getattr(check, "is_compute_capability_supported", lambda _cc: False)
            if not supported_cc(cc[0] * 10 + cc[1]):
                result.skipped[name] = f"not for compute capability {cc[0]}.{cc[1]}"
                continue
            if not check(*args[:9], name, *args[10:]):
                result.skipped[name] = "its requirement check declined this problem"
                continue
            result.runners.append(compat.make_fp4_runner(name, cc, out_dtype, use_nvfp4, enable_pdl))
            result.names.append(name)
        except Exception as exc:  # a backend that cannot serve this problem here is not compared
            result.skipped[name] = f"{type(exc).__name__}: {exc}"
    return result


def choose_and_run(args: tuple, cc: tuple[int, int], ours: Any, enable_pdl: bool = True) -> tuple[str, int]:
    """Pick (runner, tactic) with FlashInfer's AutoTuner and run it into `out` (args[6], allocated by the caller).
    Returns the chosen backend's name and tactic."""
    from flashinfer.autotuner import AutoTuner

    a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, _, _, use_nvfp4 = args
    found = candidates(args, cc, ours, enable_pdl)
    inputs = [a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, use_nvfp4,
              compat.autotuner_workspace(a.device)]
    runner, tactic = AutoTuner.get().choose_one("fp4_gemm", found.runners, compat.fp4_tuning_config(), inputs)
    runner(inputs=inputs, tactic=tactic)
    return found.names[found.runners.index(runner)], tactic


def _delegate(a: torch.Tensor, b: torch.Tensor, a_descale: torch.Tensor, b_descale: torch.Tensor,
              options: dict[str, Any], batch_invariant: bool, skip_check: bool) -> torch.Tensor:
    import flashinfer

    if batch_invariant:
        if "batch_invariant" not in compat.mm_fp4_parameters():
            raise TypeError(f"batch_invariant=True needs flashinfer-python >= 0.7.4 for backend "
                            f"{options['backend']!r}; installed: {compat.installed_version()}")
        options["batch_invariant"] = True
    if skip_check:
        options["skip_check"] = True
    return flashinfer.mm_fp4(a, b, a_descale, b_descale, **options)


def mm_fp4(
    a: torch.Tensor,
    b: torch.Tensor,
    a_descale: torch.Tensor,
    b_descale: torch.Tensor,
    alpha: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    out: torch.Tensor | None = None,
    block_size: int = 16,
    use_8x4_sf_layout: bool = False,
    backend: str = "auto",
    use_nvfp4: bool = True,
    enable_pdl: bool = True,
    *,
    batch_invariant: bool = False,
    skip_check: bool = False,
) -> torch.Tensor:
    """FP4 GEMM with `flashinfer.mm_fp4`'s signature: D = alpha * (A * SFA)(B * SFB)^T.

    MXFP4 is ``block_size=32, use_nvfp4=False`` (E8M0 scales per 32); NVFP4 is FlashInfer's default
    ``block_size=16, use_nvfp4=True`` (E4M3 scales per 16, the global scales folded into `alpha`).

    Parameters
    ----------
    a : torch.Tensor
        Packed e2m1 activations, uint8 (or float4_e2m1fn_x2) [m, k/2], row-major.
    b : torch.Tensor
        Weights as ``w.T`` of a packed e2m1 [n, k/2] tensor (column-major [k/2, n]).
    a_descale, b_descale : torch.Tensor
        Block scales in the 128x4 layout (from `mxfp4_quantize` / `nvfp4_quantize`); `b_descale` transposed.
    alpha : torch.Tensor, optional
        One-element float32 device tensor multiplying the product.
    out_dtype : torch.dtype
        torch.bfloat16 or torch.float16.
    out : torch.Tensor, optional
        Contiguous [m, n] output, allocated when None.
    block_size : int
        32 for MXFP4, 16 for NVFP4.
    use_8x4_sf_layout : bool
        trtllm's 8x4 scale layout; our backend reads 128x4 only.
    backend : str
        "cutlass_sm12x" (ours), "auto" (ours, or the autotuner's pick inside `flashinfer.autotune()`), or any
        backend name the installed `flashinfer.mm_fp4` accepts (delegated to it unchanged).
    use_nvfp4 : bool
        NVFP4 (True) or MXFP4 (False).
    enable_pdl : bool
        Programmatic dependent launch.
    batch_invariant : bool
        Keyword-only. Output rows bit-identical whatever the number of rows and the row's position (one tactic
        for every M on our backends; FlashInfer >= 0.7.4's batch-invariant class when delegating).
    skip_check : bool
        Keyword-only. Passed to FlashInfer when delegating; our checks always run.

    Returns
    -------
    torch.Tensor
        out, [m, n] of `out_dtype`.

    Raises
    ------
    TypeError, ValueError
        Bad input (before anything is launched); an unknown backend. M = 0 is not an error: the empty [0, n] result
        comes back without a launch (also under CUDA graph capture).
    ArchError
        A GPU our kernels do not serve (the message names the fix).

    Examples
    --------
    MXFP4 activations times MXFP4 weights [N, K] (FlashInfer's defaults mean NVFP4, so MXFP4 says
    ``block_size=32, use_nvfp4=False``; `b` and its scales are passed transposed, as FlashInfer takes them):

    >>> import torch, flashinfer_sm12x as fs
    >>> x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
    >>> w = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
    >>> a, a_sf = fs.mxfp4_quantize(x)  # doctest: +SKIP
    >>> b, b_sf = fs.mxfp4_quantize(w)  # doctest: +SKIP
    >>> y = fs.mm_fp4(a, b.T, a_sf, b_sf.T, block_size=32, use_nvfp4=False)  # [16, 8192] bf16  # doctest: +SKIP

    Inside ``with flashinfer.autotune():`` the default ``backend="auto"`` times our tactics against FlashInfer's SM12x
    FP4 backends and keeps the fastest per shape bucket.
    """
    if backend != OURS and backend != "auto":
        try:
            names = compat.mm_fp4_backend_names()
        except ImportError:
            names = ()
        if backend not in names:
            known = ", ".join(repr(n) for n in (OURS, "auto", *names))
            raise ValueError(f"unknown backend {backend!r}; use one of {known}"
                             + ("" if names else " (FlashInfer is not installed: its backends cannot be delegated)"))
        options = dict(alpha=alpha, out_dtype=out_dtype, out=out, block_size=block_size,
                       use_8x4_sf_layout=use_8x4_sf_layout, backend=backend, use_nvfp4=use_nvfp4,
                       enable_pdl=enable_pdl)
        return _delegate(a, b, a_descale, b_descale, options, batch_invariant, skip_check)
    p = op.validate(a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, use_8x4_sf_layout, use_nvfp4)
    if p.m == 0:  # an empty batch (an idle rank): the empty [0, n] result without a launch, as torch.matmul
        return p.out
    facts = device_facts(p.out.device)  # ArchError on chips we do not serve (with the fix in the message)
    target = facts.target
    if backend == "auto" and not batch_invariant:
        if target.emulated:
            raise ArchError("backend='auto' never picks the emulated SM90 path; ask for backend='cutlass_sm12x'")
        if _runner_base() is not object:
            cc = (target.major, target.minor) if target.suffix == "a" else torch.cuda.get_device_capability(a.device)
            args = (a, b, a_descale, b_descale, alpha, out_dtype, p.out, block_size, use_8x4_sf_layout, backend,
                    use_nvfp4)
            choose_and_run(args, cc, MmFp4Runner(enable_pdl), enable_pdl)
            return p.out
    return op.run(p, op.plan(p, batch_invariant=batch_invariant, target=target, sm_count=facts.sm_count), enable_pdl)


def is_backend_supported(backend: str, cc: int | None = None) -> bool:
    """FlashInfer's `mm_fp4.is_backend_supported` question for our backend: "cutlass_sm12x" on SM120/SM121 (and
    SM90 through the emulated MMA atom, for tests). FlashInfer's own names are delegated, not served here."""
    return backend == OURS and (cc is None or cc in SUPPORTED_CC)


def is_compute_capability_supported(cc: int) -> bool:
    return cc in SUPPORTED_CC


mm_fp4.is_backend_supported = is_backend_supported  # type: ignore[attr-defined]
mm_fp4.is_compute_capability_supported = is_compute_capability_supported  # type: ignore[attr-defined]
