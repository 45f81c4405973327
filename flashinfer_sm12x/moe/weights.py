# SPDX-License-Identifier: Apache-2.0
"""GPT-OSS checkpoint MXFP4 expert weights -> the layout the grouped GEMM / fused MoE kernels read, and back.

Checkpoint layout (as the GPT-OSS checkpoints store it and vLLM loads it):
  w13 uint8 [E, 2I, H/2] packed E2M1 (element 2j in the low nibble), rows interleaved gate/up
  (row 2i = gate_i, row 2i+1 = up_i); w13_scale uint8 E8M0 [E, 2I, H/32] row-major; w13_bias [E, 2I];
  w2 uint8 [E, H, I/2]; w2_scale [E, H, I/32]; w2_bias [E, H]. GPT-OSS: H = I = 2880.

Kernel layout (`PreparedMoEWeights`):
- H and I padded up to multiples of `pad_to` (2880 -> 2944 for 128). Padding is exact: padded weights are
  zero codes, padded scales are E8M0 code 0 (2^-127; times a zero element it is 0, and a zero block is
  what the quantizers emit for all-zero data too), padded biases are zero. A padded intermediate unit then
  has gate = up = 0, so swiglu_oai gives (0 + beta) * 0 * sigmoid(0) = 0 and swiglu gives 0; its w2 column
  is zero as well. Padded hidden rows of w2 produce zero outputs, which the caller slices off. The
  activations' own padding must be zeros (0 * NaN garbage would not be 0).
- GEMM1 rows either stay interleaved (the epilogue sees gate_i and up_i in adjacent columns, good for a
  fused activation) or become halves: [gate; up], or [up; gate] with up_first, the order FlashInfer's CUTLASS
  MoE expects (its doGatedActivationKernel reads linear = first half, gate = second half; vLLM's mxfp4.py
  swaps w1/w3 for that backend).
- Scales swizzled per expert into the 128x4 layout (CUTLASS Sm1xxBlockScaledConfig): expert e's matrix has
  its rows padded to 128 and its scale columns to 4 on its own, and starts at byte offset sf_offsets[e].
  Stored as [E, round_up(N, 128), round_up(K/32, 4)] uint8, the shape FlashInfer's block_scale_interleave
  gives vLLM for a 3-D input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from ..checks import check_tensor, one_device, round_up
from ..formats import SfLayout, swizzle_sf, swizzled_sf_size, unswizzle_sf

ActFormat = Literal["mxfp4", "mxfp8"]
_ACTS = ("mxfp4", "mxfp8")
_FN = "prepare_gpt_oss_weights"
_BYTE_DTYPES = tuple(d for d in (torch.uint8, getattr(torch, "float8_e8m0fnu", None)) if d is not None)
# A bias of any floating dtype is accepted (the pipeline reads it in float32).
_ANY_FLOAT = tuple(d for d in vars(torch).values() if isinstance(d, torch.dtype) and d.is_floating_point)


class CheckpointMoEWeights(NamedTuple):
    """Expert weights in the checkpoint's layout (linear scales); see the module docstring."""

    w13: torch.Tensor
    w13_scale: torch.Tensor
    w13_bias: torch.Tensor | None
    w2: torch.Tensor
    w2_scale: torch.Tensor
    w2_bias: torch.Tensor | None


@dataclass(frozen=True)
class PreparedMoEWeights:
    """Padded, optionally de-interleaved MXFP4 expert weights with 128x4-swizzled scales.

    w13 uint8 [E, 2*Ip, Hp/2]; w13_sf uint8 [E, round_up(2*Ip, 128), round_up(Hp/32, 4)];
    w13_bias [E, 2*Ip] (input dtype) or None; w2 uint8 [E, Hp, Ip/2];
    w2_sf uint8 [E, round_up(Hp, 128), round_up(Ip/32, 4)]; w2_bias [E, Hp] or None.
    *_sf_offsets int64 [E + 1]: byte offset of each expert's scale matrix in the flat buffer.
    hidden_size / intermediate_size are the unpadded H, I; *_padded the kernel's Hp, Ip.
    """

    w13: torch.Tensor
    w13_sf: torch.Tensor
    w13_bias: torch.Tensor | None
    w2: torch.Tensor
    w2_sf: torch.Tensor
    w2_bias: torch.Tensor | None
    w13_sf_offsets: torch.Tensor
    w2_sf_offsets: torch.Tensor
    num_experts: int
    hidden_size: int
    intermediate_size: int
    hidden_size_padded: int
    intermediate_size_padded: int
    interleaved: bool
    up_first: bool
    act: str
    pad_to: int

    def flashinfer_quant_scales(self, global_scale: float = 1.0) -> list[torch.Tensor]:
        """`quant_scales` for FlashInfer's cutlass_fused_moe W4A8 (MXFP4 weights, MXFP8 activations).

        [fc1 block scales int32 [E, 2*Ip, Hp/128], fc1 global fp32 [E], fc2 block scales int32
        [E, Hp, Ip/128], fc2 global fp32 [E]] (flashinfer_cutlass_fused_moe_binding.cu, isWMxfp4AMxfp8Quant:
        scales packed 4 per int32). Needs the layout that binding reads: halves with up first, Hp and Ip
        multiples of 128.
        """
        if self.interleaved or not self.up_first:
            raise ValueError("flashinfer_quant_scales: prepare with interleaved=False, up_first=True")
        if self.hidden_size_padded % 128 or self.intermediate_size_padded % 128:
            raise ValueError("flashinfer_quant_scales: padded H and I must be multiples of 128 (pad_to=128)")
        g = torch.full((self.num_experts,), global_scale, dtype=torch.float32, device=self.w13.device)
        return [self.w13_sf.view(torch.int32), g, self.w2_sf.view(torch.int32), g.clone()]


def _as_uint8(t: object, name: str) -> torch.Tensor:
    """A 3-D uint8 tensor (torch's own E8M0 dtype is accepted: the same bytes)."""
    t = check_tensor(t, name, _FN, _BYTE_DTYPES, ndim=3, contiguous=False)
    return t if t.dtype == torch.uint8 else t.view(torch.uint8)


def _check_bias(t: object, want: tuple[int, ...], name: str) -> torch.Tensor | None:
    return None if t is None else check_tensor(t, name, _FN, _ANY_FLOAT, shape=want, contiguous=False)


def _to_pairs(x: torch.Tensor, interleaved: bool, up_first: bool) -> torch.Tensor:
    """GEMM1 rows [E, 2n, ...] in any layout -> [E, n, 2, ...] with [..., 0, ...] = gate, [..., 1, ...] = up."""
    e, n = x.shape[0], x.shape[1] // 2
    if interleaved:
        return x.reshape(e, n, 2, *x.shape[2:])
    first, second = x[:, :n], x[:, n:]
    gate, up = (second, first) if up_first else (first, second)
    return torch.stack((gate, up), dim=2)


def _from_pairs(p: torch.Tensor, interleaved: bool, up_first: bool) -> torch.Tensor:
    e, n = p.shape[0], p.shape[1]
    if interleaved:
        return p.reshape(e, 2 * n, *p.shape[3:]).contiguous()
    gate, up = p[:, :, 0], p[:, :, 1]
    return torch.cat((up, gate) if up_first else (gate, up), dim=1).contiguous()


def _pad_dims(x: torch.Tensor, sizes: dict[int, int]) -> torch.Tensor:
    """Zero-pad dimension d of x up to sizes[d] (at the end)."""
    pad: list[int] = []
    for d in range(x.dim() - 1, -1, -1):
        pad += [0, sizes.get(d, x.shape[d]) - x.shape[d]]
    return torch.nn.functional.pad(x, pad) if any(pad) else x.contiguous()


def _swizzle(sf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    e, n, kb = sf.shape
    flat = swizzle_sf(sf.contiguous(), SfLayout.layout_128x4)  # pads each expert on its own
    per = swizzled_sf_size(n, kb, SfLayout.layout_128x4)
    offsets = torch.arange(e + 1, dtype=torch.int64, device=sf.device) * per
    return flat.reshape(e, round_up(n, 128), round_up(kb, 4)), offsets


def _unswizzle(sf: torch.Tensor, n: int, kb: int) -> torch.Tensor:
    return unswizzle_sf(sf, n, kb, SfLayout.layout_128x4).reshape(sf.shape[0], n, kb)


def prepare_gpt_oss_weights(
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w13_bias: torch.Tensor | None,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    w2_bias: torch.Tensor | None,
    *,
    pad_to: int = 128,
    interleaved: bool = True,
    up_first: bool = False,
    act: ActFormat = "mxfp4",
) -> PreparedMoEWeights:
    """GPT-OSS checkpoint MXFP4 expert weights -> the layout the grouped GEMMs and fused_moe read.

    Parameters
    ----------
    w13 : torch.Tensor
        uint8 [E, 2I, H/2] packed e2m1, rows interleaved gate/up (row 2i = gate_i, row 2i+1 = up_i).
    w13_scale : torch.Tensor
        E8M0 [E, 2I, H/32] (uint8 or float8_e8m0fnu), linear layout.
    w13_bias : torch.Tensor or None
        Float [E, 2I], interleaved like w13.
    w2 : torch.Tensor
        uint8 [E, H, I/2] packed e2m1.
    w2_scale : torch.Tensor
        E8M0 [E, H, I/32].
    w2_bias : torch.Tensor or None
        Float [E, H].
    pad_to : int
        H and I are padded to multiples of it: a positive multiple of 32 (one scale block), and of 128 for
        act="mxfp8" (the MXFP8 x MXFP4 MMA path needs K % 128 == 0). Padding is exact (module docstring).
    interleaved : bool
        Keep GEMM1 rows gate/up interleaved (True) or split them into halves (False).
    up_first : bool
        With halves, put up before gate (FlashInfer's CUTLASS order); invalid with interleaved=True.
    act : {"mxfp4", "mxfp8"}
        The activation format fused_moe will quantize to (W4A4 or W4A8); weights stay MXFP4 either way.

    Returns
    -------
    PreparedMoEWeights
        Padded weights with 128x4-swizzled scales per expert (see its docstring for shapes).

    Raises
    ------
    TypeError
        Wrong types or dtypes.
    ValueError
        Inconsistent shapes, devices or options.

    Examples
    --------
    GPT-OSS-20B's experts (32, H = I = 2880) for W4A8; the tensors are the checkpoint's as vLLM loads them:

    >>> import flashinfer_sm12x as fs
    >>> from flashinfer_sm12x.testing.moe_cases import make_weights
    >>> ckpt = make_weights(32, 2880, 2880)  # the six checkpoint tensors (random)  # doctest: +SKIP
    >>> w = fs.prepare_gpt_oss_weights(**ckpt, act="mxfp8")  # doctest: +SKIP
    >>> w.w13.shape, w.hidden_size_padded  # H and I padded to 2944  # doctest: +SKIP
    (torch.Size([32, 5888, 1472]), 2944)

    FlashInfer's `cutlass_fused_moe` wants halves with up first: ``interleaved=False, up_first=True``.
    """
    fn = _FN
    if not isinstance(pad_to, int) or isinstance(pad_to, bool):
        raise TypeError(f"{fn}: pad_to must be an int, got {type(pad_to).__name__}")
    for name, flag in (("interleaved", interleaved), ("up_first", up_first)):
        if not isinstance(flag, bool):
            raise TypeError(f"{fn}: {name} must be a bool, got {type(flag).__name__}")
    if act not in _ACTS:
        raise ValueError(f"{fn}: act must be one of {_ACTS}, got {act!r}")
    align = 128 if act == "mxfp8" else 32
    if pad_to <= 0 or pad_to % align:
        raise ValueError(f"{fn}: pad_to must be a positive multiple of {align} for act={act!r}, got {pad_to}")
    if interleaved and up_first:
        raise ValueError(f"{fn}: up_first applies to the halves layout; pass interleaved=False with it")
    w13, w13_scale = _as_uint8(w13, "w13"), _as_uint8(w13_scale, "w13_scale")
    w2, w2_scale = _as_uint8(w2, "w2"), _as_uint8(w2_scale, "w2_scale")
    num_e, two_i, h = w13.shape[0], w13.shape[1], 2 * w13.shape[2]
    if two_i % 2:
        raise ValueError(f"{fn}: w13 must have 2*I rows (gate and up), got {two_i}")
    inter = two_i // 2
    if h % 32 or inter % 32:
        raise ValueError(f"{fn}: hidden size {h} and intermediate size {inter} must be multiples of 32")
    checks = (
        (w13_scale, (num_e, two_i, h // 32), "w13_scale"),
        (w2, (num_e, h, inter // 2), "w2"),
        (w2_scale, (num_e, h, inter // 32), "w2_scale"),
    )
    for t, want, name in checks:
        if tuple(t.shape) != want:
            raise ValueError(f"{fn}: {name} must have shape {want} (from w13 {tuple(w13.shape)}), got {tuple(t.shape)}")
    w13_bias = _check_bias(w13_bias, (num_e, two_i), "w13_bias")
    w2_bias = _check_bias(w2_bias, (num_e, h), "w2_bias")
    one_device((w13, w13_scale, w13_bias, w2, w2_scale, w2_bias), fn, "all weights")

    hp, ip = round_up(h, pad_to), round_up(inter, pad_to)
    # GEMM1: work in [E, I, 2(gate, up), cols] form, pad I and the K columns, then lay the rows out.
    w13_p = _pad_dims(_to_pairs(w13, True, False), {1: ip, 3: hp // 2})
    s13_p = _pad_dims(_to_pairs(w13_scale, True, False), {1: ip, 3: hp // 32})
    w13_out = _from_pairs(w13_p, interleaved, up_first)
    w13_sf, w13_off = _swizzle(_from_pairs(s13_p, interleaved, up_first))
    b13_out = None
    if w13_bias is not None:
        b13_p = _pad_dims(_to_pairs(w13_bias.unsqueeze(2), True, False), {1: ip})
        b13_out = _from_pairs(b13_p, interleaved, up_first).squeeze(2)
    # GEMM2: N = H rows, K = I columns.
    w2_out = _pad_dims(w2, {1: hp, 2: ip // 2})
    w2_sf, w2_off = _swizzle(_pad_dims(w2_scale, {1: hp, 2: ip // 32}))
    b2_out = _pad_dims(w2_bias, {1: hp}) if w2_bias is not None else None
    return PreparedMoEWeights(
        w13=w13_out, w13_sf=w13_sf, w13_bias=b13_out, w2=w2_out, w2_sf=w2_sf, w2_bias=b2_out,
        w13_sf_offsets=w13_off, w2_sf_offsets=w2_off, num_experts=num_e, hidden_size=h,
        intermediate_size=inter, hidden_size_padded=hp, intermediate_size_padded=ip,
        interleaved=interleaved, up_first=up_first, act=act, pad_to=pad_to,
    )


def unprepare_gpt_oss_weights(
    p: PreparedMoEWeights, *, unpad: bool = True, reinterleave: bool = True
) -> CheckpointMoEWeights:
    """Inverse of `prepare_gpt_oss_weights`: scales back to the linear layout.

    unpad=True cuts the padding off (H, I); reinterleave=True restores the checkpoint's interleaved
    gate/up rows, False keeps the prepared row layout (p.interleaved / p.up_first). With both True the
    result equals the original checkpoint tensors bit for bit (biases keep their dtype).
    """
    if not isinstance(p, PreparedMoEWeights):
        raise TypeError(f"unprepare_gpt_oss_weights: expected PreparedMoEWeights, got {type(p).__name__}")
    hp, ip = p.hidden_size_padded, p.intermediate_size_padded
    h, inter = (p.hidden_size, p.intermediate_size) if unpad else (hp, ip)
    il, uf = (True, False) if reinterleave else (p.interleaved, p.up_first)

    def gemm1(x: torch.Tensor, cols: int | None) -> torch.Tensor:
        pairs = _to_pairs(x, p.interleaved, p.up_first)[:, :inter]
        if cols is not None:
            pairs = pairs[..., :cols]
        return _from_pairs(pairs, il, uf)

    s13 = _unswizzle(p.w13_sf, 2 * ip, hp // 32)
    w13 = gemm1(p.w13, h // 2)
    w13_scale = gemm1(s13, h // 32)
    w13_bias = gemm1(p.w13_bias.unsqueeze(2), None).squeeze(2) if p.w13_bias is not None else None
    s2 = _unswizzle(p.w2_sf, hp, ip // 32)
    w2 = p.w2[:, :h, : inter // 2].contiguous()
    w2_scale = s2[:, :h, : inter // 32].contiguous()
    w2_bias = p.w2_bias[:, :h].contiguous() if p.w2_bias is not None else None
    return CheckpointMoEWeights(w13, w13_scale, w13_bias, w2, w2_scale, w2_bias)
