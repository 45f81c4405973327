# SPDX-License-Identifier: Apache-2.0
"""What the activation format costs the fused MoE: its output against two float64 GPT-OSS references.

Both references (`moe.reference.gpt_oss_moe_reference`) use the same dequantized MXFP4 weights and the same
routing as the run they judge; they differ only in the activations:
- unquantized: the hidden states as given and the SwiGLU output as computed, in float64 (act_quant=None). The
  error against it is what a user of the format sees; `benchmarks/bench_moe.py`'s rel L2 column is this one.
- quantized: the activations rounded through the run's own format before each GEMM (MXFP4 for W4A4, MXFP8 for
  W4A8), as the kernels round them. The error against it is what the kernels add (bf16 GEMM outputs that move a
  few re-quantized elements, fp32 summation order).
The quantized reference against the unquantized one is the format's own error, independent of any kernel.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from ..checks import require_tensor
from ..moe.reference import gpt_oss_moe_reference

ACTS = ("mxfp4", "mxfp8")
SCHEME = {"mxfp4": "W4A4", "mxfp8": "W4A8"}  # activation format -> the mode's usual name
Routing = tuple[torch.Tensor, torch.Tensor]
# (activation format, hidden [T, H], (topk_ids, topk_weights)) -> the MoE output [T, H]
MoeRun = Callable[[str, torch.Tensor, Routing], torch.Tensor]


def relative_l2(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref||_2 / ||ref||_2 over all elements, computed in float64.

    Parameters
    ----------
    got : torch.Tensor
        The values judged, any float dtype and device.
    ref : torch.Tensor
        The yardstick, same shape (moved to got's device).

    Returns
    -------
    float
        The relative L2 error; NaN or inf when `got` holds NaN or inf (never hidden).

    Raises
    ------
    TypeError
        An argument is not a floating-point tensor.
    ValueError
        The shapes differ, or `ref` is all zeros or not finite (no relative error is defined).
    """
    fn = "relative_l2"
    for name, t in (("got", got), ("ref", ref)):
        if not require_tensor(name, t, fn).is_floating_point():
            raise TypeError(f"{fn}: {name} must be a float tensor, got {t.dtype}")
    if got.shape != ref.shape:
        raise ValueError(f"{fn}: got has shape {tuple(got.shape)}, ref {tuple(ref.shape)}")
    ref64 = ref.to(device=got.device, dtype=torch.float64)
    norm = float(ref64.norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(f"{fn}: ref must be finite and not all zeros (its L2 norm is {norm})")
    return float((got.double() - ref64).norm()) / norm


@dataclass(frozen=True)
class AccuracyRow:
    """One run's errors (relative L2). `format_error`: the quantized reference against the unquantized one."""

    data: str
    tokens: int
    act: str
    vs_unquantized: float
    vs_quantized_reference: float
    format_error: float

    @property
    def scheme(self) -> str:
        return SCHEME.get(self.act, self.act)


def measure(data: str, raw: dict[str, torch.Tensor], hidden: torch.Tensor, routing: Routing, run_moe: MoeRun,
            acts: Sequence[str] = ACTS) -> list[AccuracyRow]:
    """Run `run_moe` once per activation format on the same inputs; measure it against both references.

    Parameters
    ----------
    data : str
        A name for the data set, copied into the rows.
    raw : dict of str to torch.Tensor
        Checkpoint-layout MXFP4 weights (w13, w13_scale, w13_bias, w2, w2_scale, w2_bias), the ones `run_moe`
        was prepared from.
    hidden : torch.Tensor
        [T, H] hidden states.
    routing : tuple of torch.Tensor
        (topk_ids [T, k], topk_weights [T, k]), used as given by the run and both references.
    run_moe : callable
        (act, hidden, routing) -> [T, H] output of the MoE in activation format `act`.
    acts : sequence of str
        Activation formats, each in ACTS.

    Returns
    -------
    list of AccuracyRow
        One row per format, in `acts` order.

    Raises
    ------
    ValueError
        An unknown activation format, or an output whose shape is not the reference's.
    """
    unknown = [act for act in acts if act not in ACTS]
    if unknown:
        raise ValueError(f"measure: activation formats must be in {ACTS}, got {unknown}")
    unquantized = gpt_oss_moe_reference(hidden, routing, **raw, act_quant=None)
    rows = []
    for act in acts:
        quantized = gpt_oss_moe_reference(hidden, routing, **raw, act_quant=act)
        out = run_moe(act, hidden, routing)
        rows.append(AccuracyRow(data, hidden.shape[0], act, relative_l2(out, unquantized),
                                relative_l2(out, quantized), relative_l2(quantized, unquantized)))
    return rows


def format_table(rows: Iterable[AccuracyRow]) -> str:
    """The rows as an aligned text table, one line per row under a header."""
    lines = [f"{'data':<10} {'T':>5} {'act':<6} {'scheme':<6} {'rel L2 vs unquantized act':>26} "
             f"{'rel L2 vs quantized-act ref':>28} {'format alone':>13}"]
    lines += [f"{r.data:<10} {r.tokens:>5} {r.act:<6} {r.scheme:<6} {r.vs_unquantized:>26.3e} "
              f"{r.vs_quantized_reference:>28.3e} {r.format_error:>13.3e}" for r in rows]
    return "\n".join(lines)


CSV_FIELDS = ("device", *(f.name for f in fields(AccuracyRow)), "scheme")


def write_csv(rows: Iterable[AccuracyRow], path: Path, device: str) -> None:
    """Write the rows to `path` (CSV_FIELDS columns), creating its folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({"device": device, **asdict(r), "scheme": r.scheme})
