# SPDX-License-Identifier: Apache-2.0
"""The grouped block-scaled GEMM op over expert-contiguous rows (the MoE GEMM): validate -> plan -> run. The kernel
family (formats, tactics, proven menus, heuristic) is kernels/grouped_mm_fp4.py.

Rows are sorted by expert and every expert's segment is padded to a multiple of `tactic.tile_m`, so each M tile
belongs to one expert. `expert_of_tile` lives on the device: the routing writes it, the host never reads it (no
sync; CUDA-graph capturable). Tiles past the last used one must still name a valid expert; they compute rows nobody
reads (the MoE bounds how many there are).

With the routing plan's per-expert tables (`expert_rows` / `routed`: padded_start, counts, int32 [E] on the device),
A's rows are read only up to each expert's last counted row: a tile whose expert's rows end inside it loads A through
a device-side copy of A's TMA descriptor cut at that row (TMA zero-fills the rest without fetching it), so at decode
the GEMM reads the routed rows of A, not whole tiles (include/flashinfer_sm12x/common/a_row_bounds.cuh). The output
rows past an expert's counted rows then hold the product of zero rows; the counted rows are bit-identical.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from ..checks import check_index_range, check_no_alias, check_tensor, one_device, require_tensor, round_up
from ..jit.arch import Target, device_facts
from ..kernels.family import OUT_DTYPES, Tactic
from ..kernels.grouped_mm_fp4 import FAMILY, FORMATS, K_ALIGN
from .device_guard import on_device

_FN = "grouped_mm_fp4"
_A_ELEMS_PER_BYTE = {"mxfp4": 2, "mxfp8_mxfp4": 1}
_SF_DTYPES = (torch.uint8, torch.float8_e8m0fnu)
_E2M1X2 = getattr(torch, "float4_e2m1fn_x2", None)
# Workspace sizes per (module, device index, m, n, k, experts): a pure function of the module, the device's SM count
# and the shape.
_WORKSPACE_BYTES: dict[tuple, int] = {}


def gemm_format_of(a: torch.Tensor, fmt: str | None, fn: str = _FN) -> str:
    """The grouped GEMM format of activations `a`: `fmt` when given (checked against a's dtype), else inferred where
    a's dtype says it alone (float8_e4m3fn: W4A8; float4_e2m1fn_x2: W4A4). uint8 bytes could hold packed e2m1 of
    either block format or e4m3 bytes, so they need `fmt`."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"{fn}: fmt must be one of {FORMATS}, got {fmt!r}")
    if a.dtype == torch.float8_e4m3fn:
        inferred = "mxfp8_mxfp4"
    elif _E2M1X2 is not None and a.dtype == _E2M1X2:
        inferred = "mxfp4"
    elif a.dtype == torch.uint8:
        if fmt is None:
            raise TypeError(f"{fn}: a is uint8, which does not say its format: pass fmt='mxfp4' (packed e2m1, W4A4) "
                            "or fmt='mxfp8_mxfp4' (e4m3 bytes, W4A8)")
        return fmt
    else:
        raise TypeError(f"{fn}: a must be uint8 (packed MXFP4) or float8_e4m3fn (MXFP8) (or float4_e2m1fn_x2), got "
                        f"{a.dtype}")
    if fmt is not None and fmt != inferred:
        raise ValueError(f"{fn}: fmt={fmt!r} disagrees with a's dtype {a.dtype} ({inferred})")
    return inferred


def grouped_mm_fp4(a: torch.Tensor, a_descale: torch.Tensor, b: torch.Tensor, b_descale: torch.Tensor,
                   expert_of_tile: torch.Tensor, tactic: Tactic, out: torch.Tensor | None = None,
                   out_dtype: torch.dtype = torch.bfloat16, enable_pdl: bool = True, *,
                   fmt: str | None = None, target: Target | None = None,
                   expert_rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Grouped GEMM: row tile i of `a` times the weights of expert ``expert_of_tile[i]``.

    Parameters
    ----------
    a : torch.Tensor
        Activations, rows expert-contiguous with every expert's segment padded to ``tactic.tile_m``: uint8
        [m_total, k/2] packed e2m1 (W4A4) or float8_e4m3fn [m_total, k] (W4A8).
    a_descale : torch.Tensor
        E8M0 scales of `a` in the 128x4 layout over m_total rows (uint8 or float8_e8m0fnu).
    b : torch.Tensor
        Expert weights, uint8 [E, n, k/2] packed e2m1, K-major per expert.
    b_descale : torch.Tensor
        E8M0 scales [E, round_up(n, 128), round_up(k/32, 4)], one 128x4 block per expert.
    expert_of_tile : torch.Tensor
        int32 [m_total / tile_m], on the device: the expert of each M tile.
    tactic : Tactic
        One of ``kernels.grouped_mm_fp4.FAMILY.candidates(format)`` (the heuristic picks one for fused_moe).
    out : torch.Tensor, optional
        Contiguous [m_total, n] of `out_dtype`, allocated when None.
    out_dtype : torch.dtype
        torch.bfloat16 or torch.float16.
    enable_pdl : bool
        Programmatic dependent launch.
    fmt : {"mxfp4", "mxfp8_mxfp4"}, optional
        Keyword-only. The format; required for uint8 `a` (its dtype does not say it), else inferred from a's dtype.
    target : Target, optional
        Keyword-only. The device's build target when the caller has it (`jit.arch.device_facts`), else looked up.
    expert_rows : tuple of torch.Tensor, optional
        Keyword-only. (padded_start, counts), int32 [E] each on a's device (the MoE routing plan's tables): expert
        e's rows are ``padded_start[e] <= row < padded_start[e] + counts[e]``. A's other rows are not read; their
        output rows are the product of zero rows. The counted rows are bit-identical to a call without them.

    Returns
    -------
    torch.Tensor
        out, [m_total, n].

    Raises
    ------
    TypeError, ValueError
        Bad input (tables included: dtype, shape, device, overlap with `out`), before any launch.

    Examples
    --------
    Two experts (N = 256, K = 512), one row tile each, W4A4. N is a multiple of 128, so the experts' weights quantized
    as one [2 * N, K] matrix are each expert's own 128x4 block:

    >>> import torch, flashinfer_sm12x as fs
    >>> from flashinfer_sm12x.kernels.grouped_mm_fp4 import heuristic
    >>> tactic = heuristic(128, 256, 512, "mxfp4", groups=2)[0]
    >>> rows = 2 * tactic.tile_m  # expert 0's tile, then expert 1's
    >>> a, a_sf = fs.mxfp4_quantize(torch.randn(rows, 512, device="cuda"))  # doctest: +SKIP
    >>> b, b_sf = fs.mxfp4_quantize(torch.randn(2 * 256, 512, device="cuda"))  # doctest: +SKIP
    >>> b, b_sf = b.view(2, 256, 256), b_sf.view(2, 256, 16)  # doctest: +SKIP
    >>> tiles = torch.tensor([0, 1], dtype=torch.int32, device="cuda")  # doctest: +SKIP
    >>> out = grouped_mm_fp4(a, a_sf, b, b_sf, tiles, tactic, fmt="mxfp4")  # [rows, 256] bf16  # doctest: +SKIP
    """
    module, args = _prepare(a, a_descale, b, b_descale, expert_of_tile, tactic, out, out_dtype, enable_pdl,
                            fmt=fmt, target=target)
    tables = _expert_row_tables(expert_rows, b, a.device, args[5], _FN)
    with on_device(a.device.index):
        module.run(*args[:7], *tables, args[7])
    return args[5]


def grouped_mm_fp4_launcher(a: torch.Tensor, a_descale: torch.Tensor, b: torch.Tensor, b_descale: torch.Tensor,
                            expert_of_tile: torch.Tensor, tactic: Tactic, out: torch.Tensor,
                            enable_pdl: bool = True,
                            routed: tuple[torch.Tensor, torch.Tensor] | None = None, *, fmt: str | None = None,
                            target: Target | None = None,
                            expert_rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> Callable[[], torch.Tensor]:
    """Validate once, then launch many times: for callers that reuse the same buffers every step (the fused MoE's
    kernel pipeline), so a repeated call costs one binding call of host time.

    Parameters
    ----------
    a, a_descale, b, b_descale, expert_of_tile, tactic, enable_pdl, fmt, target
        As for `grouped_mm_fp4`.
    out : torch.Tensor
        The output buffer (required; its dtype is the output dtype).
    routed : tuple of torch.Tensor, optional
        (padded_start, counts), int32 [E] each on the device (the MoE routing plan's tables): write only the rows
        ``row - padded_start[e] < counts[e]`` of each tile's expert e (the "store_routed" epilogue); the other rows
        of `out` keep what they held. A's other rows are not read (as with `expert_rows`).
    expert_rows : tuple of torch.Tensor, optional
        (padded_start, counts) for the plain store: A's rows past each expert's counted rows are not read (as for
        `grouped_mm_fp4`). Not with `routed`, which bounds A's rows by the same tables.

    Returns
    -------
    callable
        Launches the GEMM on the current stream with exactly these tensors and returns `out`. The caller keeps the
        tensors' shapes, dtypes and devices unchanged (their contents may change). The launcher holds `b` and
        `b_descale` weakly and raises RuntimeError once they are freed.

    Raises
    ------
    TypeError, ValueError, ArchError
        As `grouped_mm_fp4`, when this function is called (never from the returned launcher).
    """
    require_tensor("out", out, _FN)
    epilogue = "store" if routed is None else "store_routed"
    module, args = _prepare(a, a_descale, b, b_descale, expert_of_tile, tactic, out, out.dtype, enable_pdl,
                            epilogue, fmt=fmt, target=target)
    a_bytes, _, a_sf, _, tiles, _, workspace, pdl = args
    if routed is not None and expert_rows is not None:
        raise ValueError(f"{_FN}: pass routed (store_routed) or expert_rows (store), not both: routed bounds A's rows "
                         "by the same tables")
    if routed is not None:
        padded_start, counts = _expert_row_tables(routed, b, a.device, out, _FN, "routed")
    else:
        padded_start, counts = _expert_row_tables(expert_rows, b, a.device, out, _FN)
    # The weights are held weakly: a launcher cached by its caller must not keep freed weights alive.
    b_ref, b_sf_ref = weakref.ref(b), weakref.ref(b_descale)
    del args

    index = a.device.index

    def launch() -> torch.Tensor:
        weights, scales = b_ref(), b_sf_ref()
        if weights is None or scales is None:
            raise RuntimeError(f"{_FN}: the weights this launcher was built for have been freed")
        with on_device(index):
            if routed is None:
                module.run(a_bytes, weights, a_sf, scales.view(torch.uint8), tiles, out, workspace, padded_start,
                           counts, pdl)
            else:
                module.run_store_routed(a_bytes, weights, a_sf, scales.view(torch.uint8), tiles, out, workspace,
                                        padded_start, counts, pdl)
        return out

    return launch


def _expert_row_tables(tables: Any, b: torch.Tensor, device: torch.device, outputs: torch.Tensor | tuple | None,
                       fn: str, name: str = "expert_rows") -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(padded_start, counts) of the routing plan checked for the binding: int32 [E] each, contiguous, on `device`,
    sharing no memory with the outputs; (None, None) when `tables` is None."""
    if tables is None:
        return None, None
    if not isinstance(tables, tuple) or len(tables) != 2:
        raise TypeError(f"{fn}: {name} must be a (padded_start, counts) tuple of tensors")
    checked = tuple(check_tensor(t, table, fn, torch.int32, shape=(b.shape[0],))
                    for t, table in zip(tables, ("padded_start", "counts"), strict=True))
    one_device([*checked], fn)
    if checked[0].device != device:
        raise ValueError(f"{fn}: padded_start and counts must be on {device}")
    named = (("padded_start", checked[0]), ("counts", checked[1]))
    outs = outputs if isinstance(outputs, tuple) else (("out", outputs),)
    for out_name, out in outs:
        if out is not None:
            check_no_alias(out, named, fn, out_name)
    return checked[0], checked[1]


def _named_inputs(a: Any, a_descale: Any, b: Any, b_descale: Any, expert_of_tile: Any) -> tuple[tuple[str, Any], ...]:
    return (("a", a), ("a_descale", a_descale), ("b", b), ("b_descale", b_descale), ("expert_of_tile", expert_of_tile))


def _prepare(a: torch.Tensor, a_descale: torch.Tensor, b: torch.Tensor, b_descale: torch.Tensor,
             expert_of_tile: torch.Tensor, tactic: Tactic, out: torch.Tensor | None, out_dtype: torch.dtype,
             enable_pdl: bool, epilogue: str = "store", *, fmt: str | None,
             target: Target | None) -> tuple[Any, tuple]:
    """Every check of grouped_mm_fp4, the module lookup and the workspace: (module, arguments of module.run).
    With a fused epilogue `out` is not checked (the caller checks its own outputs) and not allocated."""
    require_tensor("a", a, _FN)
    fmt = gemm_format_of(a, fmt)
    menu = FAMILY.candidates(fmt)
    if not isinstance(tactic, Tactic) or tactic not in menu:
        raise ValueError(f"{_FN}: tactic for {fmt} must be one of {[t.name for t in menu]}, got {tactic!r}")
    check_tensor(a, "a", _FN, a.dtype)
    check_tensor(b, "b", _FN, torch.uint8)
    if a.ndim != 2 or b.ndim != 3:
        raise ValueError(f"{_FN}: a must be 2-D and b 3-D, got {tuple(a.shape)} and {tuple(b.shape)}")
    m, k, (experts, n) = a.shape[0], a.shape[1] * _A_ELEMS_PER_BYTE[fmt], b.shape[:2]
    if b.shape[2] * 2 != k:
        raise ValueError(f"{_FN}: K mismatch: a gives {k}, b gives {b.shape[2] * 2}")
    if k % K_ALIGN[fmt] or n % 8 or m % tactic.tile_m or m == 0:
        raise ValueError(f"{_FN}: {fmt} needs K % {K_ALIGN[fmt]} == 0, N % 8 == 0 and m_total a positive "
                         f"multiple of {tactic.tile_m}; got m_total={m}, n={n}, k={k}")
    kb = round_up(k // 32, 4)
    check_tensor(a_descale, "a_descale", _FN, _SF_DTYPES, numel=round_up(m, 128) * kb)
    check_tensor(b_descale, "b_descale", _FN, _SF_DTYPES, numel=experts * round_up(n, 128) * kb)
    check_tensor(expert_of_tile, "expert_of_tile", _FN, torch.int32, shape=(m // tactic.tile_m,))
    if not isinstance(out_dtype, torch.dtype) or str(out_dtype).removeprefix("torch.") not in OUT_DTYPES:
        raise ValueError(f"{_FN}: out_dtype must be bfloat16 or float16, got {out_dtype}")
    if epilogue != "store":
        if not FAMILY.serves(epilogue, fmt, tactic):
            raise ValueError(f"{_FN}: the {epilogue} epilogue needs tile_n % 64 == 0, got {tactic.name}")
        if epilogue == "swiglu_quantize" and n % 64:
            raise ValueError(f"{_FN}: the {epilogue} epilogue needs n = 2 * inter a multiple of 64, got {n}")
    if epilogue != "swiglu_quantize" and out is not None:
        check_tensor(out, "out", _FN, out_dtype, shape=(m, n))
        check_no_alias(out, _named_inputs(a, a_descale, b, b_descale, expert_of_tile), _FN)
    # The binding takes m, n, k as 32-bit ints and CUTLASS builds the scale layouts from int shapes.
    check_index_range(_FN, m_total=m, n=n, k=k, a_descale_elements=a_descale.numel(),
                      b_descale_elements=b_descale.numel())
    tensors = [a, a_descale, b, b_descale, expert_of_tile] + ([out] if out is not None else [])
    devices = {t.device for t in tensors}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        raise ValueError(f"{_FN}: all tensors must be on one CUDA device, got {sorted(map(str, devices))}")
    if target is None:
        target = device_facts(a.device).target
    if out is None and epilogue != "swiglu_quantize":
        out = torch.empty(m, n, dtype=out_dtype, device=a.device)

    module = FAMILY.load(target, fmt, tactic, out_dtype, epilogue)
    # The device too: the A-row-bound descriptor slots scale with its SM count.
    key = (id(module), a.device.index, m, n, k, experts)
    size = _WORKSPACE_BYTES.get(key)
    if size is None:
        with on_device(a.device.index):
            size = _WORKSPACE_BYTES[key] = int(module.workspace_bytes(m, n, k, experts))
    workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=a.device)
    a_bytes = a if a.dtype == torch.uint8 else a.view(torch.uint8)
    return module, (a_bytes, b, a_descale.view(torch.uint8), b_descale.view(torch.uint8), expert_of_tile, out,
                    workspace, bool(enable_pdl and not target.emulated))


# ------------------------------------------------------------------------------------------------------------------
# GEMM1 of the MoE with its activation fused into the epilogue (epilogue "swiglu_quantize")

_BIAS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def swiglu_quantize_outputs(m_total: int, inter: int, gemm_format: str,
                            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Buffers of `grouped_mm_fp4_swiglu_quantize`'s outputs: GEMM2's A (uint8 [m_total, inter/2] packed e2m1 for
    W4A4, float8_e4m3fn [m_total, inter] for W4A8) and its E8M0 scales (uint8, 128x4 over round_up(m_total, 128)
    rows)."""
    sf = torch.zeros(round_up(m_total, 128) * round_up(inter // 32, 4), dtype=torch.uint8, device=device)
    if gemm_format == "mxfp4":
        return torch.empty(m_total, inter // 2, dtype=torch.uint8, device=device), sf
    return torch.empty(m_total, inter, dtype=torch.float8_e4m3fn, device=device), sf


def grouped_mm_fp4_swiglu_quantize_launcher(
        a: torch.Tensor, a_descale: torch.Tensor, b: torch.Tensor, b_descale: torch.Tensor,
        expert_of_tile: torch.Tensor, tactic: Tactic, out: torch.Tensor, out_sf: torch.Tensor,
        enable_pdl: bool = True,
        routed: tuple[torch.Tensor, torch.Tensor] | None = None, *, fmt: str | None = None,
        target: Target | None = None) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """Validate once, then launch GEMM1 with the fused activation epilogue many times (the fused MoE's pipeline).

    Parameters
    ----------
    a, a_descale, b, b_descale, expert_of_tile, tactic, enable_pdl, fmt, target
        As for `grouped_mm_fp4`; b's rows (n = 2 * inter) interleaved gate/up (row 2i = gate_i, 2i+1 = up_i), and
        tactic.tile_n a multiple of 64.
    out, out_sf : torch.Tensor
        GEMM2's activation operand and its scales, as `swiglu_quantize_outputs` allocates them.
    routed : tuple of torch.Tensor, optional
        (padded_start, counts), int32 [E] each: write only the routed rows and read only their rows of A (as
        `grouped_mm_fp4_launcher`).

    Returns
    -------
    callable
        ``launch(bias, swiglu_oai, g1, alpha_e, beta_e, limit_e, alpha, beta, limit, has_limit)`` runs the GEMM and
        returns (out, out_sf): bias [E, n] float32/float16/bfloat16 (16-byte aligned) or None; g1 / alpha_e /
        beta_e / limit_e float32 [E] or None (None: the scalars alpha / beta / limit; has_limit False: no
        clamping). Those arguments are checked by the binding; the caller validates them first.

    Raises
    ------
    TypeError, ValueError, ArchError
        Bad operands or outputs, before any launch.
    """
    fn = f"{_FN} swiglu_quantize"
    require_tensor("out", out, fn)
    module, args = _prepare(a, a_descale, b, b_descale, expert_of_tile, tactic, None, torch.bfloat16, enable_pdl,
                            "swiglu_quantize", fmt=fmt, target=target)
    a_bytes, _, a_sf, _, tiles, _, workspace, pdl = args
    m, inter, fmt = a.shape[0], b.shape[1] // 2, gemm_format_of(a, fmt, fn)
    want_out, want_sf = (torch.uint8, inter // 2) if fmt == "mxfp4" else (torch.float8_e4m3fn, inter)
    check_tensor(out, "out", fn, want_out, shape=(m, want_sf))
    check_tensor(out_sf, "out_sf", fn, _SF_DTYPES, numel=round_up(m, 128) * round_up(inter // 32, 4))
    one_device([a, out, out_sf], fn)
    inputs = _named_inputs(a, a_descale, b, b_descale, expert_of_tile)
    check_no_alias(out, inputs + (("out_sf", out_sf),), fn)
    check_no_alias(out_sf, inputs, fn, "out_sf")
    tables = _expert_row_tables(routed, b, a.device, (("out", out), ("out_sf", out_sf)), fn, "routed")
    out_bytes, sf_bytes = out.view(torch.uint8), out_sf.view(torch.uint8)
    b_ref, b_sf_ref = weakref.ref(b), weakref.ref(b_descale)
    index = a.device.index
    del args

    def launch(bias: torch.Tensor | None, swiglu_oai: bool, g1: torch.Tensor | None, alpha_e: torch.Tensor | None,
               beta_e: torch.Tensor | None, limit_e: torch.Tensor | None, alpha: float, beta: float, limit: float,
               has_limit: bool) -> tuple[torch.Tensor, torch.Tensor]:
        weights, scales = b_ref(), b_sf_ref()
        if weights is None or scales is None:
            raise RuntimeError(f"{fn}: the weights this launcher was built for have been freed")
        with on_device(index):
            module.run_swiglu_quantize(a_bytes, weights, a_sf, scales.view(torch.uint8), tiles, out_bytes, sf_bytes,
                                       workspace, bias, swiglu_oai, g1, alpha_e, beta_e, limit_e, alpha, beta, limit,
                                       has_limit, *tables, pdl)
        return out, out_sf

    return launch


def grouped_mm_fp4_swiglu_quantize(
        a: torch.Tensor, a_descale: torch.Tensor, b: torch.Tensor, b_descale: torch.Tensor,
        expert_of_tile: torch.Tensor, tactic: Tactic, *, bias: torch.Tensor | None = None,
        activation: str = "swiglu_oai", alpha: float | torch.Tensor = 1.702, beta: float | torch.Tensor = 1.0,
        limit: float | torch.Tensor | None = 7.0, g1: torch.Tensor | None = None,
        enable_pdl: bool = True, fmt: str | None = None,
        expert_rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The MoE's GEMM1 with fc1 bias, SwiGLU and the quantization for GEMM2 fused into its epilogue.

    Equal, bit for bit, to `grouped_mm_fp4` (bf16 out) followed by the activation kernel: h = bf16(A @ B^T);
    gate, up = h[:, 0::2], h[:, 1::2] (+ g1[e] scaling and bias); a = (up + beta) * gate' * sigmoid(alpha * gate')
    with gate' = min(gate, limit) and up clamped to [-limit, limit] ("swiglu_oai"), or silu(gate) * up ("swiglu");
    then a quantized to MXFP4 (W4A4) or MXFP8 (W4A8) with E8M0 scales per 32 (the "rceil" recipe).

    Parameters
    ----------
    a, a_descale, b, b_descale, expert_of_tile, tactic, enable_pdl
        As for `grouped_mm_fp4`; b [E, 2I, K/2] with gate/up rows interleaved; tactic.tile_n % 64 == 0.
    bias : torch.Tensor, optional
        fc1 bias [E, 2I] (float32 / float16 / bfloat16), interleaved like b.
    activation : {"swiglu_oai", "swiglu"}
    alpha, beta, limit : float or torch.Tensor
        Scalars or float32 [E] per expert; limit None: no clamping.
    g1 : torch.Tensor, optional
        float32 [E]: each expert's scale of GEMM1's product, applied before the bias.
    fmt : {"mxfp4", "mxfp8_mxfp4"}, optional
        As for `grouped_mm_fp4`: required for uint8 `a`.
    expert_rows : tuple of torch.Tensor, optional
        (padded_start, counts), int32 [E] each: only the counted rows are computed from A and written (the
        launcher's `routed`); the others of act keep what they were allocated with, act_sf's stay zero.

    Returns
    -------
    tuple of torch.Tensor
        (act, act_sf): uint8 [m_total, I/2] packed e2m1 (W4A4) or float8_e4m3fn [m_total, I] (W4A8), and uint8
        E8M0 scales in the 128x4 layout over round_up(m_total, 128) rows.

    Raises
    ------
    TypeError, ValueError
        Bad input, before any launch.
    """
    fn = f"{_FN} swiglu_quantize"
    if activation not in ("swiglu_oai", "swiglu"):
        raise ValueError(f"{fn}: activation must be 'swiglu_oai' or 'swiglu', got {activation!r}")
    require_tensor("a", a, fn)
    require_tensor("b", b, fn)
    fmt = gemm_format_of(a, fmt, fn)
    if b.ndim != 3:
        raise ValueError(f"{fn}: b must be 3-D [E, 2I, K/2], got {tuple(b.shape)}")
    experts, n = b.shape[0], b.shape[1]
    if bias is not None:
        check_tensor(bias, "bias", fn, _BIAS_DTYPES, shape=(experts, n))
        if bias.data_ptr() % 16:
            bias = bias.clone()  # the epilogue reads bias rows in 16-byte vectors
    per_expert = {}
    for name, v in (("g1", g1), ("alpha", alpha), ("beta", beta), ("limit", limit)):
        if isinstance(v, torch.Tensor):
            per_expert[name] = check_tensor(v, name, fn, torch.float32, shape=(experts,))
        elif name == "g1" and v is not None:
            raise TypeError(f"{fn}: g1 must be a float32 tensor [E] or None")
    one_device([a, b, bias, *per_expert.values()], fn)
    out, out_sf = swiglu_quantize_outputs(a.shape[0], n // 2, fmt, a.device)
    launch = grouped_mm_fp4_swiglu_quantize_launcher(a, a_descale, b, b_descale, expert_of_tile, tactic, out, out_sf,
                                                      enable_pdl, expert_rows, fmt=fmt)
    scalar = {k: (0.0 if v is None or isinstance(v, torch.Tensor) else float(v))
              for k, v in (("alpha", alpha), ("beta", beta), ("limit", limit))}
    return launch(bias, activation == "swiglu_oai", per_expert.get("g1"), per_expert.get("alpha"),
                  per_expert.get("beta"), per_expert.get("limit"), scalar["alpha"], scalar["beta"], scalar["limit"],
                  limit is not None)
