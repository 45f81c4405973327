# SPDX-License-Identifier: Apache-2.0
"""What every kernel family declares once, so that prebuild, the compile sweep, the CI proofs and the ops iterate
families instead of naming ops.

A family is one kernel template (`jit/<name>.cu.jinja`) with the menu of values that may reach it. The block-scaled
GEMM families (`mm_fp4`, `grouped_mm_fp4`) share one shape of description, `GemmFamily`: per format, the candidate
tactics the compile sweep tries and, per target, the tactics whose compile proof passed (the shipped menu).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ArchError
from ..jit.arch import Target
from ..jit.module import ModuleSpec, Source, load_module
from ..jit.render import Menu, render

# torch is not imported here (the command line lists families without it): output dtypes are named by their torch
# name, and torch dtypes are accepted wherever a name is.
OUT_DTYPES = ("bfloat16", "float16")


def out_dtype_name(dtype: Any) -> str:
    """"bfloat16" / "float16" for torch.bfloat16 / torch.float16 or those names; ValueError for anything else."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be torch.bfloat16 or torch.float16, got {dtype}")
    return name


class ModuleCache:
    """A family's loaded modules by a hashable key of their parameters (target first): the hot path of every op
    looks its module up here, without rendering or hashing the module's source. Thread-safe; a miss builds or loads
    outside the lock (jit.module serialises builds of one module)."""

    def __init__(self) -> None:
        self._modules: dict[Hashable, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, spec: Callable[[], ModuleSpec]) -> Any:
        """The module under `key`, loaded from `spec()` on first use."""
        module = self._modules.get(key)
        if module is None:
            loaded = load_module(spec())
            with self._lock:
                module = self._modules.setdefault(key, loaded)
        return module

    def clear(self) -> None:
        with self._lock:
            self._modules.clear()
# The SASS instruction a GEMM's compile proof must find: the native block-scaled MMA, or the emulation's MMA (bf16
# on decoded e2m1 for W4A4/NVFP4; f16 for W4A8, whose e4m3 operand converts to f16 exactly).
EMULATED_MMA = {"mxfp4": "HMMA.16816.F32.BF16", "nvfp4": "HMMA.16816.F32.BF16", "mxfp8_mxfp4": "HMMA.16816.F32"}
NATIVE_MMA = {"mxfp4": "OMMA.SF", "nvfp4": "OMMA.SF", "mxfp8_mxfp4": "QMMA.SF"}


@dataclass(frozen=True)
class Tactic:
    """One GEMM kernel configuration: schedule and CTA tile (M x N x K); swap_ab computes D^T = B A^T."""

    schedule: str
    tile_m: int
    tile_n: int
    tile_k: int
    swap_ab: bool = False

    @property
    def name(self) -> str:
        return f"{self.schedule}_{self.tile_m}x{self.tile_n}x{self.tile_k}" + ("_swapab" if self.swap_ab else "")


@dataclass(frozen=True)
class ProofCase:
    """One compile proof: build `spec` to a cubin and require `instruction` (and no mainloop spills if asked)."""

    label: str
    spec: ModuleSpec
    instruction: str
    no_mainloop_spills: bool = True
    no_spills: bool = False


class KernelFamily(Protocol):
    """The interface prebuild and the compile sweep use."""

    name: str

    def prebuild(self, target: Target) -> list[ModuleSpec]:
        """The modules `flashinfer-sm12x prebuild` builds for `target` (the shipped menu)."""
        ...

    def proof_cases(self, target: Target, *, candidates: bool = False) -> list[ProofCase]:
        """Compile proofs of the shipped menu for `target`, or of every candidate config."""
        ...


@dataclass(frozen=True)
class VariantFamily:
    """A family of small modules, one per (target, variant): each variant is one rendering of the template (e.g. the
    quantizers' output format), everything else a run-time argument. Prebuild builds every variant; the compile
    proof of each requires `instruction_of(variant, target)` in the SASS ("" requires nothing) and no spills."""

    name: str
    variants: tuple[str, ...]
    spec_of: Callable[[Target, str], ModuleSpec]
    instruction_of: Callable[[str, Target], str | None]
    modules: ModuleCache = field(default_factory=ModuleCache, compare=False, repr=False)

    def load(self, target: Target, variant: str) -> Any:
        """The loaded module of `variant` for `target` (built on first use, then cached)."""
        return self.modules.get((target, variant), lambda: self.spec_of(target, variant))

    def prebuild(self, target: Target) -> list[ModuleSpec]:
        return [self.spec_of(target, v) for v in self.variants]

    def proof_cases(self, target: Target, *, candidates: bool = False) -> list[ProofCase]:
        return [ProofCase(f"{self.name}/{v}", self.spec_of(target, v), self.instruction_of(v, target) or "",
                          no_mainloop_spills=False, no_spills=True) for v in self.variants]


@dataclass(frozen=True)
class GemmFamily:
    """A block-scaled GEMM template: formats, candidate tactics, the proven menu per target, its module specs."""

    name: str
    formats: tuple[str, ...]
    emulated_formats: tuple[str, ...]  # formats whose SM90 build exists (emulated MMA atom)
    menu: Menu
    candidates_of: Mapping[str, tuple[Tactic, ...]]
    proven: Mapping[str, Mapping[str, tuple[Tactic, ...]]]  # target name -> format -> tactics
    prebuild_out_dtypes: tuple[str, ...]
    emulation_menu_of: str = "sm_120a"  # the emulated SM90 build runs this target's menu
    describe: Callable[[str, Tactic], str] | None = None
    # Epilogues beyond "store" (write D) and which tactics serve them: (epilogue, format, tactic) -> bool.
    epilogues: tuple[str, ...] = ("store",)
    epilogue_serves: Callable[[str, str, Tactic], bool] | None = None
    # The heuristic's sort key of a tactic for a problem (see `heuristic`); None keeps the shipped order.
    preference: Callable[..., tuple] | None = None
    modules: ModuleCache = field(default_factory=ModuleCache, compare=False, repr=False)

    def candidates(self, fmt: str) -> tuple[Tactic, ...]:
        """Every tactic the compile sweep tries for `fmt`."""
        if fmt not in self.candidates_of:
            raise ValueError(f"{self.name}: format must be one of {self.formats}, got {fmt!r}")
        return self.candidates_of[fmt]

    def shipped(self, fmt: str, target: Target | None = None) -> tuple[Tactic, ...]:
        """The proven tactics for `fmt` on `target`; a target without its own sweep (e.g. sm_120f) gets those
        proven on every swept target; None or an emulated target gets `emulation_menu_of`'s."""
        name = self.emulation_menu_of if target is None or target.emulated else target.name
        if name in self.proven:
            return self.proven[name][fmt]
        return tuple(t for t in self.candidates(fmt) if all(t in menu[fmt] for menu in self.proven.values()))

    def serves(self, epilogue: str, fmt: str, tactic: Tactic) -> bool:
        """Whether `tactic` can run `epilogue` for `fmt` ("store" always can)."""
        if epilogue == "store":
            return True
        return epilogue in self.epilogues and self.epilogue_serves is not None and \
            self.epilogue_serves(epilogue, fmt, tactic)

    def heuristic(self, m: int, n: int, k: int, fmt: str = "mxfp4", target: Target | None = None,
                  sm_count: int | None = None, *, groups: int = 1) -> tuple[Tactic, ...]:
        """The format's shipped tactics for `target` in preference order for an m x n x k problem (the grouped GEMM:
        m routed rows over `groups` experts). Waves are counted in `sm_count` SMs (default: `assumed_sm_count`).
        Reasoned, not measured on SM12x: FlashInfer's autotuner decides for real where it is asked."""
        shipped = self.shipped(fmt, target)
        if self.preference is None:
            return shipped
        sms = sm_count if sm_count is not None else assumed_sm_count(target)
        return tuple(sorted(shipped, key=lambda t: self.preference(t, fmt, m, n, k, groups, sms)))

    def load(self, target: Target, fmt: str, tactic: Tactic, out_dtype: Any, epilogue: str = "store") -> Any:
        """The loaded module of `spec(...)` (built on first use), cached per parameters."""
        key = (target, fmt, tactic, out_dtype_name(out_dtype), epilogue)
        return self.modules.get(key, lambda: self.spec(target, fmt, tactic, out_dtype, epilogue))

    def spec(self, target: Target, fmt: str, tactic: Tactic, out_dtype: Any,
             epilogue: str = "store") -> ModuleSpec:
        """The JIT module of one (format, tactic, output dtype, epilogue) on `target`; values are checked against
        the menu."""
        if target.emulated and fmt not in self.emulated_formats:
            raise ArchError(f"{self.name}: {fmt} has no emulated (SM90) build")
        if not self.serves(epilogue, fmt, tactic):
            raise ValueError(f"{self.name}: the {epilogue!r} epilogue does not serve {fmt} {tactic.name}")
        out_name = out_dtype if isinstance(out_dtype, str) else str(out_dtype).removeprefix("torch.")
        params: dict[str, Any] = {"format": fmt, "out_dtype": out_name, "tile_m": tactic.tile_m,
                                  "tile_n": tactic.tile_n, "tile_k": tactic.tile_k, "schedule": tactic.schedule,
                                  "emulated": target.emulated, "swap_ab": tactic.swap_ab, "epilogue": epilogue}
        if "swap_ab" not in self.menu:
            if tactic.swap_ab:
                raise ValueError(f"{self.name} has no swapped-A/B tactics, got {tactic.name}")
            del params["swap_ab"]
        if "epilogue" not in self.menu:
            del params["epilogue"]
        text = render(f"{self.name}.cu.jinja", params, self.menu)
        group = f"{fmt}_{out_name}_{tactic.name}" + ("" if epilogue == "store" else f"_{epilogue}")
        return ModuleSpec(op=self.name, group=group, target=target, sources=(Source(f"{self.name}.cu", text),),
                          uses_cutlass=True)

    def required_instruction(self, fmt: str, target: Target) -> str:
        return EMULATED_MMA[fmt] if target.emulated else NATIVE_MMA[fmt]

    def formats_for(self, target: Target) -> tuple[str, ...]:
        return self.emulated_formats if target.emulated else self.formats

    def prebuild(self, target: Target) -> list[ModuleSpec]:
        plain = [self.spec(target, fmt, tactic, out) for fmt in self.formats_for(target)
                 for out in self.prebuild_out_dtypes for tactic in self.shipped(fmt, target)]
        fused = [self.spec(target, fmt, tactic, self.prebuild_out_dtypes[0], epilogue)
                 for epilogue in self.epilogues if epilogue != "store" for fmt in self.formats_for(target)
                 for tactic in self.shipped(fmt, target) if self.serves(epilogue, fmt, tactic)]
        return plain + fused

    def proof_cases(self, target: Target, *, candidates: bool = False, formats: tuple[str, ...] | None = None,
                    out_dtypes: tuple[Any, ...] = ("bfloat16",)) -> list[ProofCase]:
        cases = []
        for fmt in formats or self.formats_for(target):
            if target.emulated and fmt not in self.emulated_formats:
                continue
            for tactic in self.candidates(fmt) if candidates else self.shipped(fmt, target):
                for out in out_dtypes:
                    label = f"{self.name}/{fmt}/{out_dtype_name(out)}/{tactic.name}"
                    # Emulated builds are correctness vehicles: their spills are reported, not held against them.
                    cases.append(ProofCase(label, self.spec(target, fmt, tactic, out),
                                           self.required_instruction(fmt, target),
                                           no_mainloop_spills=not target.emulated))
                for epilogue in self.epilogues:
                    if epilogue != "store" and self.serves(epilogue, fmt, tactic):
                        cases.append(ProofCase(f"{self.name}/{fmt}/{epilogue}/{tactic.name}",
                                               self.spec(target, fmt, tactic, out_dtypes[0], epilogue),
                                               self.required_instruction(fmt, target),
                                               no_mainloop_spills=not target.emulated))
        return cases


# The SM count a heuristic assumes when it is not given the GPU's: the one CC 12.1 part (DGX Spark's GB10) has 48;
# SM120 parts range from 36 to 188 (RTX 5090: 170), so their callers pass the device's count (jit.arch.device_facts).
ASSUMED_SM_COUNT = {"sm_121a": 48, "sm_121f": 48}
DEFAULT_SM_COUNT = 170


def assumed_sm_count(target: Target | None) -> int:
    """The SM count a heuristic assumes for `target` without a device (48 for sm_121a, else 170)."""
    return ASSUMED_SM_COUNT.get(target.name, DEFAULT_SM_COUNT) if target is not None else DEFAULT_SM_COUNT
