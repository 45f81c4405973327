# SPDX-License-Identifier: Apache-2.0
"""What the GPU workload scripts (scripts/sanitize_*.py, benchmarks/moe_accuracy.py) and the GPU test modules share:
the target they run for, and building their modules ahead of the run, so a run under compute-sanitizer (about 100x
slower) or a test only loads them."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import BuildError
from ..jit.arch import Target, parse_target, target_for_capability
from ..jit.module import ModuleSpec
from ..jit.prebuild import job_budget, make_plan, run_plan


def workload_target(arch: str | None) -> Target:
    """The target named by `arch` (e.g. "sm_90a", no GPU needed), else the current CUDA device's target.

    Parameters
    ----------
    arch : str or None
        A build target name, or None for the device's (FLASHINFER_SM12X_EMULATE=1 makes an SM90 GPU's sm_90a).

    Returns
    -------
    Target
        The target.

    Raises
    ------
    ArchError
        `arch` is not a target, or the device has none.
    RuntimeError
        `arch` is None and there is no CUDA GPU.
    """
    if arch is not None:
        return parse_target(arch, correct_suffix=False)
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU here: name the target with --arch (e.g. --arch sm_90a)")
    return target_for_capability(torch.cuda.get_device_capability())


def unique_specs(specs: Sequence[ModuleSpec]) -> list[ModuleSpec]:
    """`specs` without repeats, first occurrence kept. (op, group, target) names a module's configs; unlike
    `ModuleSpec.name` it needs no toolchain, so a listing works where nvcc or CUTLASS are missing."""
    seen: dict[tuple[str, str, str], ModuleSpec] = {}
    for spec in specs:
        seen.setdefault((spec.op, spec.group, spec.target_name), spec)
    return list(seen.values())


def build_modules(specs: Sequence[ModuleSpec], label: str, jobs: int | None = None) -> bool:
    """Build `specs` (cached ones are skipped) in parallel within the machine's cores and memory.

    Parameters
    ----------
    specs : sequence of ModuleSpec
        The modules a workload loads (all for one target).
    label : str
        Names the workload in the progress lines and errors.
    jobs : int, optional
        Builds at once (default: MAX_JOBS, else the CPU count; memory limits it further).

    Returns
    -------
    bool
        True when every module is built or was cached.

    Raises
    ------
    ConfigError
        `specs` is empty.
    ToolchainError
        nvcc is missing or too old for the target.
    """
    specs = unique_specs(specs)
    targets = list(dict.fromkeys(spec.target for spec in specs))
    items = make_plan(targets, {label: lambda target: [s for s in specs if s.target == target]}, label)
    budget = job_budget(jobs)
    print(f"{label}: {len(items)} module(s) to build or find cached; builds at once: {budget.why}", flush=True)
    summary = run_plan(items, budget, echo=lambda line: print(f"{label}: {line}", flush=True))
    print(f"{label}: {summary.render()}", flush=True)
    for name, error in summary.failed:
        print(f"{label}: FAILED {name}:\n{error}", flush=True)
    return not summary.failed and not summary.interrupted


def prebuild_for_tests(specs: Sequence[ModuleSpec], label: str) -> None:
    """A GPU test module's modules, built in parallel before its tests load them one by one.

    FLASHINFER_SM12X_PREBUILD_PARALLEL sets the builds at once (default 2); 0 builds nothing now (each module is
    built when a test first loads it, e.g. when only a few tests of the module are selected).

    Raises
    ------
    BuildError
        A module failed to build.
    """
    jobs = int(os.environ.get("FLASHINFER_SM12X_PREBUILD_PARALLEL", "2"))
    if jobs > 0 and not build_modules(specs, label, jobs):
        raise BuildError(f"{label}: a module failed to build (the log above names it)")
