# SPDX-License-Identifier: Apache-2.0
"""prepare_gpt_oss_weights: exact round trips, layout details, padding that leaves the reference unchanged."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.formats import unswizzle_sf
from flashinfer_sm12x.moe import (
    PreparedMoEWeights,
    gpt_oss_moe_reference,
    prepare_gpt_oss_weights,
    unprepare_gpt_oss_weights,
)
from flashinfer_sm12x.testing.moe_cases import make_inputs, make_weights

LAYOUTS = [(True, False), (False, False), (False, True)]  # (interleaved, up_first)
LAYOUT_IDS = ["interleaved", "gate_up", "up_gate"]


def _args(w: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return w["w13"], w["w13_scale"], w["w13_bias"], w["w2"], w["w2_scale"], w["w2_bias"]


def _off_128x4(m: int, kb: int, n_kt: int) -> int:
    # The 128x4 scale-factor layout (formats/scale_layout.py docstring), written out independently of swizzle_sf.
    return (m // 128) * n_kt * 512 + (kb // 4) * 512 + (m % 32) * 16 + ((m % 128) // 32) * 4 + kb % 4


@pytest.mark.parametrize(("interleaved", "up_first"), LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize(("h", "inter", "pad_to"), [(64, 64, 128), (96, 160, 32), (64, 64, 64), (128, 256, 128)])
def test_round_trip_is_exact(interleaved: bool, up_first: bool, h: int, inter: int, pad_to: int) -> None:
    w = make_weights(3, h, inter, seed=h + inter)
    p = prepare_gpt_oss_weights(*_args(w), pad_to=pad_to, interleaved=interleaved, up_first=up_first)
    hp, ip = -(-h // pad_to) * pad_to, -(-inter // pad_to) * pad_to
    assert (p.hidden_size_padded, p.intermediate_size_padded) == (hp, ip)
    assert p.w13.shape == (3, 2 * ip, hp // 2) and p.w2.shape == (3, hp, ip // 2)
    assert p.w13_bias.shape == (3, 2 * ip) and p.w2_bias.shape == (3, hp)
    n13, kb13, n2, kb2 = -(-2 * ip // 128) * 128, -(-hp // 32 // 4) * 4, -(-hp // 128) * 128, -(-ip // 32 // 4) * 4
    assert p.w13_sf.shape == (3, n13, kb13) and p.w2_sf.shape == (3, n2, kb2)
    assert p.w13_sf_offsets.tolist() == [e * n13 * kb13 for e in range(4)]
    assert p.w2_sf_offsets.tolist() == [e * n2 * kb2 for e in range(4)]
    back = unprepare_gpt_oss_weights(p)
    for name, got, want in zip(w, back, _args(w), strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want), name


@pytest.mark.parametrize(("interleaved", "up_first"), LAYOUTS, ids=LAYOUT_IDS)
def test_row_layout_and_padding_content(interleaved: bool, up_first: bool) -> None:
    h, inter, ip, hp = 96, 96, 128, 128
    w = make_weights(2, h, inter, seed=1)
    p = prepare_gpt_oss_weights(*_args(w), interleaved=interleaved, up_first=up_first)
    lin = unprepare_gpt_oss_weights(p, unpad=False, reinterleave=False)
    assert lin.w13.shape == (2, 2 * ip, hp // 2) and lin.w13_scale.shape == (2, 2 * ip, hp // 32)
    gate_rows, up_rows = w["w13"][:, 0::2], w["w13"][:, 1::2]
    gate_b, up_b = w["w13_bias"][:, 0::2], w["w13_bias"][:, 1::2]
    if interleaved:
        got_gate, got_up, bg, bu = p.w13[:, 0::2], p.w13[:, 1::2], p.w13_bias[:, 0::2], p.w13_bias[:, 1::2]
    else:
        first, second = p.w13[:, :ip], p.w13[:, ip:]
        got_gate, got_up = (second, first) if up_first else (first, second)
        fb, sb = p.w13_bias[:, :ip], p.w13_bias[:, ip:]
        bg, bu = (sb, fb) if up_first else (fb, sb)
    assert torch.equal(got_gate[:, :inter, : h // 2], gate_rows) and torch.equal(got_up[:, :inter, : h // 2], up_rows)
    assert torch.equal(bg[:, :inter], gate_b) and torch.equal(bu[:, :inter], up_b)
    # Padding: zero codes, zero scale codes (E8M0 0 -> 2^-127, times 0), zero biases.
    for t in (got_gate[:, inter:], got_up[:, inter:], got_gate[..., h // 2 :], bg[:, inter:], bu[:, inter:],
              p.w2[:, h:], p.w2[..., inter // 2 :], p.w2_bias[:, h:]):
        assert t.numel() and not bool(t.any())
    assert not bool(lin.w13_scale[:, :, h // 32 :].any()) and not bool(lin.w2_scale[:, h:].any())


def test_scales_swizzled_per_expert() -> None:
    w = make_weights(3, 96, 160, seed=2)
    p = prepare_gpt_oss_weights(*_args(w), pad_to=32, interleaved=False)  # 2I = 320 rows: 3 row tiles, padded
    lin = unprepare_gpt_oss_weights(p, unpad=False, reinterleave=False)
    n, kb = 320, 3  # K/32 = 3 scale columns, padded to 4 in the swizzled layout
    flat = p.w13_sf.reshape(-1)
    for e in range(3):
        start, end = p.w13_sf_offsets[e], p.w13_sf_offsets[e + 1]
        assert torch.equal(flat[start:end], p.w13_sf[e].reshape(-1))
        assert torch.equal(unswizzle_sf(p.w13_sf[e], n, kb), lin.w13_scale[e])  # unswizzle(swizzle) = id
        sl = p.w13_sf[e].reshape(-1)
        for m, k in [(0, 0), (5, 2), (37, 1), (130, 2), (319, 0), (200, 1)]:
            assert int(sl[_off_128x4(m, k, 1)]) == int(lin.w13_scale[e, m, k])
        assert not bool(sl[_off_128x4(319, 3, 1)])  # padded scale column
        assert not bool(sl[_off_128x4(330, 0, 1)])  # padded scale row (expert's own 128-row tile)
    for e in range(3):
        assert torch.equal(unswizzle_sf(p.w2_sf[e], 96, 5), lin.w2_scale[e])


@pytest.mark.parametrize(("interleaved", "up_first"), LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("act_quant", [None, "mxfp4"])
def test_padding_leaves_reference_unchanged(interleaved: bool, up_first: bool, act_quant: str | None) -> None:
    h, inter, e, t, k = 2880, 96, 2, 3, 2  # GPT-OSS hidden 2880 -> 2944; I 96 -> 128
    w = make_weights(e, h, inter, seed=4)
    hidden, logits = make_inputs(t, h, e, seed=5)
    want = gpt_oss_moe_reference(hidden, logits, *_args(w), k, act_quant=act_quant)
    p = prepare_gpt_oss_weights(*_args(w), interleaved=interleaved, up_first=up_first)
    assert p.hidden_size_padded == 2944 and p.intermediate_size_padded == 128
    lin = unprepare_gpt_oss_weights(p, unpad=False, reinterleave=False)
    hidden_p = torch.nn.functional.pad(hidden, (0, 2944 - h))  # activations' padding must be zeros
    got = gpt_oss_moe_reference(hidden_p, logits, *lin, k, interleaved=interleaved, up_first=up_first,
                                act_quant=act_quant)
    assert got.shape == (t, 2944)
    assert not bool(got[:, h:].any())
    torch.testing.assert_close(got[:, :h], want, rtol=1e-12, atol=1e-9)


def test_mxfp8_prep_and_flashinfer_quant_scales() -> None:
    w = make_weights(2, 96, 64, seed=6)
    p = prepare_gpt_oss_weights(*_args(w), interleaved=False, up_first=True, act="mxfp8")
    assert isinstance(p, PreparedMoEWeights) and p.act == "mxfp8"
    fc1, g1, fc2, g2 = p.flashinfer_quant_scales()
    assert fc1.dtype == torch.int32 and fc1.shape == (2, 256, 1) and fc2.shape == (2, 128, 1)
    assert g1.dtype == torch.float32 and g1.tolist() == [1.0, 1.0] and g2.shape == (2,)
    with pytest.raises(ValueError):
        prepare_gpt_oss_weights(*_args(w)).flashinfer_quant_scales()  # interleaved rows
    with pytest.raises(ValueError):
        prepare_gpt_oss_weights(*_args(w), pad_to=32, interleaved=False, up_first=True).flashinfer_quant_scales()


def test_no_bias_and_e8m0_dtype() -> None:
    w = make_weights(2, 64, 64, seed=7)
    p = prepare_gpt_oss_weights(w["w13"], w["w13_scale"], None, w["w2"], w["w2_scale"], None)
    assert p.w13_bias is None and p.w2_bias is None
    back = unprepare_gpt_oss_weights(p)
    assert back.w13_bias is None and torch.equal(back.w13_scale, w["w13_scale"])
    e8m0 = getattr(torch, "float8_e8m0fnu", None)
    if e8m0 is not None:
        q = prepare_gpt_oss_weights(w["w13"], w["w13_scale"].view(e8m0), None, w["w2"], w["w2_scale"].view(e8m0),
                                    None)
        assert torch.equal(q.w13_sf, p.w13_sf)


def _bad() -> list[tuple[str, dict, type[Exception]]]:
    e, h, i = 2, 64, 64
    u8 = torch.uint8
    return [
        ("w13 float", {"w13": torch.zeros(e, 2 * i, h // 2)}, TypeError),
        ("scale int32", {"w2_scale": torch.zeros(e, h, i // 32, dtype=torch.int32)}, TypeError),
        ("w2 not a tensor", {"w2": None}, TypeError),
        ("bias int", {"w13_bias": torch.zeros(e, 2 * i, dtype=torch.int32)}, TypeError),
        ("bias list", {"w2_bias": [0.0] * h}, TypeError),
        ("w13 2-D", {"w13": torch.zeros(2 * i, h // 2, dtype=u8)}, ValueError),
        ("odd 2I", {"w13": torch.zeros(e, 2 * i + 1, h // 2, dtype=u8)}, ValueError),
        ("H % 32", {"w13": torch.zeros(e, 2 * i, 40 // 2, dtype=u8)}, ValueError),
        ("I % 32", {"w13": torch.zeros(e, 2 * 48, h // 2, dtype=u8)}, ValueError),
        ("w13 scale shape", {"w13_scale": torch.zeros(e, 2 * i, h // 16, dtype=u8)}, ValueError),
        ("w2 shape", {"w2": torch.zeros(e, h, i, dtype=u8)}, ValueError),
        ("w2 experts", {"w2": torch.zeros(e + 1, h, i // 2, dtype=u8)}, ValueError),
        ("w2 scale shape", {"w2_scale": torch.zeros(e, h + 32, i // 32, dtype=u8)}, ValueError),
        ("bias shape", {"w13_bias": torch.zeros(e, i)}, ValueError),
        ("pad_to 48", {"pad_to": 48}, ValueError),
        ("pad_to 0", {"pad_to": 0}, ValueError),
        ("pad_to 64 mxfp8", {"pad_to": 64, "act": "mxfp8"}, ValueError),
        ("pad_to float", {"pad_to": 128.0}, TypeError),
        ("act", {"act": "fp8"}, ValueError),
        ("interleaved str", {"interleaved": "yes"}, TypeError),
        ("interleaved + up_first", {"up_first": True}, ValueError),
    ]


@pytest.mark.parametrize(("what", "override", "exc"), _bad(), ids=[c[0] for c in _bad()])
def test_prepare_rejects(what: str, override: dict, exc: type[Exception]) -> None:
    w = make_weights(2, 64, 64)
    kw = {**w, **override}
    args = [kw.pop(n) for n in ("w13", "w13_scale", "w13_bias", "w2", "w2_scale", "w2_bias")]
    with pytest.raises(exc):
        prepare_gpt_oss_weights(*args, **kw)


def test_unprepare_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        unprepare_gpt_oss_weights(make_weights(1, 64, 64))  # type: ignore[arg-type]
