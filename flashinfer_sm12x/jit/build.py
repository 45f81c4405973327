# SPDX-License-Identifier: Apache-2.0
"""One build: sources in a private staging directory -> build.ninja -> ninja + nvcc/c++ -> one shared object."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError
from .progress import Heartbeat, say

ARTIFACT = "module.so"


@dataclass(frozen=True)
class BuildPlan:
    module: str
    sources: tuple[Path, ...]  # files inside the staging directory
    nvcc: str | None  # None for host-only modules
    cxx: str
    cuda_flags: tuple[str, ...]
    cxx_flags: tuple[str, ...]
    ldflags: tuple[str, ...]
    jobs: int


def _quote(args: tuple[str, ...] | list[str]) -> str:
    # ninja's own escaping is for $ and spaces in paths; shell quoting covers the command line.
    return " ".join(shlex.quote(a).replace("$", "$$") for a in args)


def write_ninja(plan: BuildPlan, staging: Path) -> Path:
    lines = [
        "ninja_required_version = 1.3",
        f"cxx = {shlex.quote(plan.cxx)}",
        f"cxx_flags = {_quote(plan.cxx_flags)}",
        f"ldflags = {_quote(plan.ldflags)}",
    ]
    if plan.nvcc:
        lines += [f"nvcc = {shlex.quote(plan.nvcc)}", f"cuda_flags = {_quote(plan.cuda_flags)}"]
        lines += [
            "rule cuda",
            "  command = $nvcc $cuda_flags -MD -MF $out.d -c $in -o $out",
            "  depfile = $out.d",
            "  description = nvcc $in",
        ]
    lines += [
        "rule cxx",
        "  command = $cxx $cxx_flags -MD -MF $out.d -c $in -o $out",
        "  depfile = $out.d",
        "  description = c++ $in",
        "rule link",
        "  command = $cxx -shared $in $ldflags -o $out",
        "  description = link $out",
    ]
    objects = []
    for src in plan.sources:
        obj = f"{src.name}.o"
        rule = "cuda" if src.suffix == ".cu" else "cxx"
        if rule == "cuda" and not plan.nvcc:
            raise BuildError(f"{src.name} is CUDA but the module was planned without nvcc")
        lines.append(f"build {obj}: {rule} {src.name}")
        objects.append(obj)
    lines.append(f"build {ARTIFACT}: link {' '.join(objects)}")
    lines.append(f"default {ARTIFACT}")
    path = staging / "build.ninja"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_ninja(ninja: str, plan: BuildPlan, staging: Path) -> float:
    """Build; print which TU is compiling and the elapsed time. Returns the build's seconds."""
    write_ninja(plan, staging)
    n_units = len(plan.sources)
    say(f"building {plan.module}: {n_units} translation unit(s), {plan.jobs} job(s)")
    current = {"step": "starting"}
    start = time.monotonic()
    env = dict(os.environ, NINJA_STATUS="[%f/%t] ")
    proc = subprocess.Popen(
        [ninja, "-C", str(staging), "-j", str(plan.jobs)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    output: list[str] = []
    with Heartbeat(lambda t: f"building {plan.module}: {current['step']} ({t:.0f} s elapsed)"):
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if line.startswith("[") and "] " in line:
                current["step"] = line.strip()
        proc.wait()
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise BuildError(f"building {plan.module} failed after {seconds:.0f} s:\n{''.join(output)[-20000:]}")
    say(f"built {plan.module} in {seconds:.1f} s")
    return seconds


def read_depfiles(staging: Path) -> set[Path]:
    """Every file the compilers reported as a dependency (from the -MD depfiles), as real absolute paths."""
    deps: set[Path] = set()
    for depfile in staging.glob("*.d"):
        text = depfile.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            if ":" not in line:
                continue
            _, rhs = line.split(":", 1)
            # Make-style escaping: "\ " is a space inside a path.
            for token in rhs.replace("\\ ", "\0").split():
                path = Path(token.replace("\0", " "))
                if not path.is_absolute():
                    path = staging / path
                deps.add(Path(os.path.realpath(path)))
    staging_real = Path(os.path.realpath(staging))
    return {p for p in deps if p.is_file() and staging_real not in p.parents}
