# SPDX-License-Identifier: Apache-2.0
"""Build targets: which `sm_XXXy` a module is compiled for, and which GPUs may load it.

The block-scaled MMA (`mma ... kind::mxf4nvf4.block_scale`) and `cvt.rn.satfinite.e2m1x2.f32` exist only for
arch-specific (`a`) or family (`f`) targets. A suffix-less sm_120 build fails in ptxas, so a suffix-less
request is corrected to the `a` target with a message saying why.

Loading rules (a module never runs on a chip it was not built for):
  sm_120a -> CC 12.0 only        sm_121a -> CC 12.1 only
  sm_120f -> CC 12.0 and 12.1    sm_121f -> CC 12.1
  sm_90a  -> CC 9.0, only for the emulated-MMA test builds (FLASHINFER_SM12X_EMULATE=1)
"""

from __future__ import annotations

import os
import re
import sys
import threading
from dataclasses import dataclass

from .. import env
from ..errors import ArchError, ToolchainError

EMULATE = "FLASHINFER_SM12X_EMULATE"


@dataclass(frozen=True)
class Target:
    major: int
    minor: int
    suffix: str  # "a" or "f"

    @property
    def name(self) -> str:
        return f"sm_{self.major}{self.minor}{self.suffix}"

    @property
    def gencode(self) -> str:
        sm = f"{self.major}{self.minor}{self.suffix}"
        return f"-gencode=arch=compute_{sm},code=sm_{sm}"

    @property
    def emulated(self) -> bool:
        """SM90 builds of the SM12x templates with the emulated block-scaled MMA atom."""
        return self.major == 9

    @property
    def min_nvcc(self) -> tuple[int, int]:
        if self.major == 9:
            return (12, 8)
        if self.suffix == "f" or (self.major, self.minor) == (12, 1):
            return (12, 9)
        return (12, 8)

    def runs_on(self, cc: tuple[int, int]) -> bool:
        if self.suffix == "f":
            return cc[0] == self.major and cc[1] >= self.minor
        return cc == (self.major, self.minor)

    def __str__(self) -> str:
        return self.name


SUPPORTED = ("sm_120a", "sm_121a", "sm_120f", "sm_121f", "sm_90a")
_PATTERN = re.compile(r"^(?:sm_|compute_)?(\d+)\.?(\d)([af]?)$")


def parse_target(text: str, *, correct_suffix: bool = True) -> Target:
    """Parse `sm_120a`, `120a` or `12.0a` (FlashInfer's spelling). A missing suffix is corrected to `a`."""
    raw = text.strip().lower()
    match = _PATTERN.match(raw)
    if not match:
        raise ArchError(f"{text!r} is not a build target; use one of {', '.join(SUPPORTED)}.")
    major, minor, suffix = int(match.group(1)), int(match.group(2)), match.group(3)
    if not suffix:
        fixed = Target(major, minor, "a")
        if fixed.name not in SUPPORTED:
            # Suggest only targets that exist: sm_999 must not be answered with sm_999a.
            raise ArchError(
                f"{text!r} is not a flashinfer_sm12x target: kernels are built for SM120/SM121 "
                f"({', '.join(SUPPORTED[:4])}); sm_90a only for the emulation tests."
            )
        if not correct_suffix and major == 9:
            raise ArchError(f"{text!r} has no suffix: the SM90 build of the SM12x templates (emulation) is "
                            f"{fixed.name}; name it so.")
        if not correct_suffix:
            raise ArchError(
                f"{text!r} has no 'a'/'f' suffix: the block-scaled MMA and cvt.e2m1x2 exist only for "
                f"arch-specific targets. Use {fixed.name} (or sm_{major}{minor}f for the whole family)."
            )
        _say(
            f"{text!r} has no 'a'/'f' suffix; the block-scaled MMA needs an arch-specific target, "
            f"so building for {fixed.name} instead."
        )
        suffix = "a"
    target = Target(major, minor, suffix)
    if target.name not in SUPPORTED:
        raise ArchError(
            f"{target.name} is not a flashinfer_sm12x target: kernels are built for SM120/SM121 "
            f"({', '.join(SUPPORTED[:4])}); sm_90a only for the emulation tests."
        )
    return target


def _split(value: str) -> list[str]:
    return [part for part in re.split(r"[\s,;]+", value) if part]


def requested_targets() -> list[Target] | None:
    """Targets named by FLASHINFER_SM12X_ARCH, else the 12.x entries of FLASHINFER_CUDA_ARCH_LIST, else None."""
    own = os.environ.get(env.ARCH, "")
    if own:
        return [parse_target(t) for t in _split(own)]
    flashinfer_list = os.environ.get(env.CUDA_ARCH_LIST, "")
    if flashinfer_list:
        picked = [t for t in _split(flashinfer_list) if re.match(r"^(sm_)?12\.?[01]", t)]
        if picked:
            return [parse_target(t) for t in picked]
    return None


def target_for_capability(cc: tuple[int, int]) -> Target:
    """The target whose code runs on a GPU of compute capability `cc` (honouring the env overrides)."""
    requested = requested_targets()
    if requested is not None:
        for target in requested:
            if target.runs_on(cc):
                if target.emulated and not emulation_enabled():
                    break
                return target
        names = ", ".join(t.name for t in requested)
        raise ArchError(
            f"the requested targets ({names}) cannot run on this GPU (compute capability {cc[0]}.{cc[1]}): "
            f"{_fix_for(cc)}"
        )
    if cc in ((12, 0), (12, 1)):
        return Target(cc[0], cc[1], "a")
    if cc == (9, 0) and emulation_enabled():
        return Target(9, 0, "a")
    raise ArchError(f"no flashinfer_sm12x kernels for compute capability {cc[0]}.{cc[1]}: {_fix_for(cc)}")


def _fix_for(cc: tuple[int, int]) -> str:
    if cc == (12, 1):
        return "a DGX Spark (12.1) needs sm_121a or sm_120f code; SM120-only (sm_120a) binaries are never loaded on it."
    if cc == (12, 0):
        return "an SM120 GPU needs sm_120a or sm_120f code."
    if cc == (9, 0):
        return (
            f"SM90 has no block-scaled MMA; set {EMULATE}=1 to run the SM12x templates through the emulated "
            "MMA atom (a correctness test, not a fast path)."
        )
    return "flashinfer_sm12x serves SM120/SM121 GPUs (RTX 50xx, RTX PRO 6000 Blackwell, DGX Spark)."


def emulation_enabled() -> bool:
    return os.environ.get(EMULATE, "") not in ("", "0")


def check_nvcc_supports(target: Target, nvcc_version: tuple[int, int]) -> None:
    if nvcc_version < target.min_nvcc:
        need = ".".join(map(str, target.min_nvcc))
        have = ".".join(map(str, nvcc_version))
        raise ToolchainError(
            f"nvcc {have} cannot build {target.name} (needs CUDA >= {need}). Install CUDA toolkit >= {need} "
            f"and point FLASHINFER_SM12X_NVCC (or CUDA_HOME) at it."
        )


def _say(message: str) -> None:
    if not env.quiet():
        print(f"[flashinfer_sm12x] {message}", file=sys.stderr)


@dataclass(frozen=True)
class DeviceFacts:
    """What the ops need to know of a CUDA device: the build target whose code runs on it and its SM count (the
    heuristics' wave size: from a DGX Spark's 48 to an RTX PRO 6000's 188 on SM12x)."""

    index: int
    target: Target
    sm_count: int


_DEVICE_FACTS: dict[int, DeviceFacts] = {}
_DEVICE_FACTS_LOCK = threading.Lock()


def device_index(device: object) -> int:
    """The CUDA device index of a torch device (or index); "cuda" without one means the current device."""
    index = device if isinstance(device, int) else getattr(device, "index", None)
    if index is None:
        import torch

        index = torch.cuda.current_device()
    return int(index)


def device_facts(device: object) -> DeviceFacts:
    """The target and SM count of a torch CUDA device: the one lookup of both, cached per device index. Public entry
    points call it once per call and hand the result down. Raises ArchError (with the fix) on a GPU without kernels.
    The environment variables that choose the target are read on a device's first call; after changing them in a
    running process, call `clear_device_targets()`."""
    index = device_index(device)
    facts = _DEVICE_FACTS.get(index)
    if facts is None:
        import torch

        props = torch.cuda.get_device_properties(index)
        facts = DeviceFacts(index, target_for_capability((props.major, props.minor)), int(props.multi_processor_count))
        with _DEVICE_FACTS_LOCK:
            facts = _DEVICE_FACTS.setdefault(index, facts)
    return facts


def clear_device_targets() -> None:
    """Forget the cached device facts (after changing FLASHINFER_SM12X_ARCH / _EMULATE in a process)."""
    with _DEVICE_FACTS_LOCK:
        _DEVICE_FACTS.clear()
