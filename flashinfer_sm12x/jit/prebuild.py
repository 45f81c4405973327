# SPDX-License-Identifier: Apache-2.0
"""Ahead-of-time builds (`flashinfer-sm12x prebuild`): a plan of modules, built in parallel within a job budget
that fits this machine's cores and memory, with a progress line per module and a summary at the end.

Ctrl-C stops the running builds (their ninja/nvcc process groups), their staging directories are removed by the
builds themselves, and the command exits 130.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from .. import env
from ..errors import ConfigError, Sm12xError
from . import build, toolchain
from .arch import Target, check_nvcc_supports
from .module import ModuleSpec, build_module, install_bundled, module_dir_for, verify_spec

GIB = 1 << 30
# Host memory one translation unit takes while it compiles (nvcc's cicc + ptxas peaks, measured).
CUTLASS_TU_BYTES = int(5.5 * GIB)
SMALL_TU_BYTES = GIB // 2


@dataclass(frozen=True)
class PlanItem:
    """One module to build, and the family (op) it belongs to."""

    family: str
    spec: ModuleSpec

    @property
    def translation_units(self) -> tuple[str, ...]:
        return tuple(source.name for source in self.spec.sources)

    @property
    def memory_bytes(self) -> int:
        per_unit = CUTLASS_TU_BYTES if self.spec.uses_cutlass else SMALL_TU_BYTES
        return per_unit * max(1, len(self.spec.sources))


def make_plan(targets: Iterable[Target], families: dict[str, Callable[[Target], list[ModuleSpec]]],
              what: str) -> list[PlanItem]:
    """Every family's modules for every target, each module once (first occurrence kept).

    Parameters
    ----------
    targets
        The build targets.
    families
        family name -> function giving that family's modules for a target.
    what
        How the caller names the plan in an error (e.g. "--ops mma_probe").

    Returns
    -------
    list[PlanItem]
        The modules to build, in the families' order.

    Raises
    ------
    ConfigError
        The plan is empty; the message names each family that has no build for each target.
    ToolchainError
        nvcc is missing or too old for one of the targets.
    """
    targets = list(targets)
    nvcc_version = toolchain.find_nvcc().version
    for target in targets:
        check_nvcc_supports(target, nvcc_version)
    items: list[PlanItem] = []
    seen: set[str] = set()
    empty: list[str] = []
    for target in targets:
        for family, modules_of in families.items():
            specs = modules_of(target)
            if not specs:
                empty.append(f"{family} has no {target.name} build")
            for spec in specs:
                if spec.name not in seen:
                    seen.add(spec.name)
                    items.append(PlanItem(family, spec))
    if not items:
        raise ConfigError(f"nothing to build for {what}: {'; '.join(empty)}.")
    return items


def mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable from /proc/meminfo in bytes, or None where the kernel does not report it."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(frozen=True)
class JobBudget:
    """How many modules build at once, and the host memory they may use together."""

    jobs: int
    memory_bytes: int | None  # None: unknown, only `jobs` limits
    why: str


def job_budget(jobs: int | None = None, meminfo: Path = Path("/proc/meminfo")) -> JobBudget:
    """Parallel builds: `jobs` if given, else MAX_JOBS, else os.cpu_count(); memory: MemAvailable.

    Parameters
    ----------
    jobs
        An explicit number of builds at once (--jobs), or None.
    meminfo
        Where to read MemAvailable (a test passes its own file).

    Returns
    -------
    JobBudget
        The CPU and memory limits the scheduler keeps to.

    Raises
    ------
    ConfigError
        jobs < 1, or MAX_JOBS is not a positive integer.
    """
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    if jobs is not None:
        cpu, source = jobs, "--jobs"
    elif os.environ.get(env.MAX_JOBS):
        cpu, source = env.max_jobs(), env.MAX_JOBS
    else:
        cpu, source = os.cpu_count() or 1, "CPUs"
    memory = mem_available_bytes(meminfo)
    if memory is None:
        return JobBudget(cpu, None, f"{cpu} ({source}); memory not known")
    fits = max(1, memory // CUTLASS_TU_BYTES)
    why = (f"{cpu} ({source}); {memory / GIB:.1f} GiB available fits {fits} CUTLASS unit(s) at "
           f"{CUTLASS_TU_BYTES / GIB:.1f} GiB")
    return JobBudget(cpu, memory, why)


@dataclass
class Summary:
    built: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    bundled: list[str] = field(default_factory=list)  # copied from an installed kernel bundle: no compile
    failed: list[tuple[str, str]] = field(default_factory=list)
    wall_seconds: float = 0.0
    child_cpu_seconds: float = 0.0
    child_peak_rss_bytes: int = 0
    interrupted: bool = False

    def render(self) -> str:
        return (f"prebuild: {len(self.built)} built, {len(self.cached)} cached, {len(self.bundled)} from kernel "
                f"bundles, {len(self.failed)} failed; "
                f"wall {self.wall_seconds:.1f} s, compilers' CPU {self.child_cpu_seconds:.1f} s, "
                f"peak compiler RSS {self.child_peak_rss_bytes / GIB:.2f} GiB")


def _children_usage() -> tuple[float, int]:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss_bytes = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # Linux reports KiB
    return usage.ru_utime + usage.ru_stime, rss_bytes


def _is_cached(spec: ModuleSpec, root: Path | None) -> bool:
    artifact, _ = verify_spec(spec, module_dir_for(spec, root))
    return artifact is not None


def run_plan(items: list[PlanItem], budget: JobBudget, *, root: Path | None = None,
             echo: Callable[[str], None] = print) -> Summary:
    """Build every planned module within `budget`; one progress line per module start and end.

    Parameters
    ----------
    items
        The plan (make_plan).
    budget
        Builds at once and their memory (job_budget).
    root
        The JIT cache root (default: the configured cache).
    echo
        Where progress lines go.

    Returns
    -------
    Summary
        What was built, found cached or failed, with the wall time and the compilers' CPU time and peak RSS.
        `interrupted` is True when Ctrl-C stopped the run; the running builds were then terminated.
    """
    summary = Summary()
    cpu_before, _ = _children_usage()
    start = time.monotonic()
    total = len(items)
    pending = deque(enumerate(items, 1))
    running: dict[Future[str], tuple[int, PlanItem, float]] = {}
    memory_in_use = 0

    def one(index: int, item: PlanItem) -> str:
        name = item.spec.name
        if _is_cached(item.spec, root):
            return "cached"
        if install_bundled(item.spec, root):
            return "bundled"
        echo(f"[{index}/{total}] building {name} ({', '.join(item.translation_units)})")
        build_module(item.spec, root, announce=False)
        return "built"

    def fits(item: PlanItem) -> bool:
        if not running:
            return True  # one build always runs, whatever its size
        if len(running) >= budget.jobs:
            return False
        return budget.memory_bytes is None or memory_in_use + item.memory_bytes <= budget.memory_bytes

    pool = ThreadPoolExecutor(max_workers=budget.jobs, thread_name_prefix="prebuild")
    try:
        while pending or running:
            while pending and fits(pending[0][1]):
                index, item = pending.popleft()
                memory_in_use += item.memory_bytes
                running[pool.submit(one, index, item)] = (index, item, time.monotonic())
            done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                index, item, began = running.pop(future)
                memory_in_use -= item.memory_bytes
                name = item.spec.name
                try:
                    outcome = future.result()
                except Sm12xError as exc:
                    summary.failed.append((name, str(exc)))
                    echo(f"[{index}/{total}] FAILED {name} after {time.monotonic() - began:.1f} s: "
                         f"{str(exc).splitlines()[0]}")
                    continue
                if outcome == "cached":
                    summary.cached.append(name)
                    echo(f"[{index}/{total}] cached {name}")
                elif outcome == "bundled":
                    summary.bundled.append(name)
                    echo(f"[{index}/{total}] from a kernel bundle: {name}")
                else:
                    summary.built.append(name)
                    echo(f"[{index}/{total}] built {name} in {time.monotonic() - began:.1f} s")
    except KeyboardInterrupt:
        summary.interrupted = True
        build.stop_new_builds()
        pending.clear()
        # Running builds fail as soon as their process groups are gone; their staging directories go with them.
        while any(not f.done() for f in running):
            build.terminate_builds(grace_seconds=1.0)
            wait(running, timeout=0.2)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        build.allow_new_builds()
    cpu_after, peak_rss = _children_usage()
    summary.wall_seconds = time.monotonic() - start
    summary.child_cpu_seconds = cpu_after - cpu_before
    summary.child_peak_rss_bytes = peak_rss
    return summary
