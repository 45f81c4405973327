# SPDX-License-Identifier: Apache-2.0
"""One build: sources in a private staging directory -> build.ninja -> ninja + nvcc/c++ -> one shared object."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError
from .progress import Heartbeat, say

ARTIFACT = "module.so"
HEARTBEAT_SECONDS = 15.0  # how often a running build says what it compiles


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
    announce: bool = True  # False where a caller (prebuild) prints its own line per module


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


# Build processes now running (ninja, each in its own process group with its nvcc/c++ children), so that an
# interrupted prebuild can stop them all promptly: terminate_builds().
_running: set[subprocess.Popen[str]] = set()
_running_lock = threading.Lock()
_stopping = threading.Event()


def stop_new_builds() -> None:
    """Make every later run_ninja() fail at once (an interrupted prebuild starts nothing new)."""
    _stopping.set()


def allow_new_builds() -> None:
    _stopping.clear()


def terminate_builds(grace_seconds: float = 3.0) -> int:
    """Stop every running build's process group (SIGTERM, then SIGKILL after `grace_seconds`).

    Returns
    -------
    int
        How many builds were running.
    """
    with _running_lock:
        procs = list(_running)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace_seconds
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        if all(p.poll() is not None for p in procs):
            break
    return len(procs)


def _step_names(plan: BuildPlan) -> list[str]:
    """ninja's description of each compile step, in the order the build.ninja lists them."""
    return [f"{'nvcc' if src.suffix == '.cu' else 'c++'} {src.name}" for src in plan.sources]


def describe_progress(module: str, pending: list[str], elapsed: float) -> str:
    """The heartbeat line: which translation units are still compiling (or the link), and the time so far.

    Parameters
    ----------
    module
        The module's name.
    pending
        ninja's descriptions ("nvcc mm_fp4.cu") of the compile steps not finished yet.
    elapsed
        Seconds since the build started.

    Returns
    -------
    str
        e.g. "building mm_fp4_...: compiling mm_fp4.cu (nvcc) (45 s elapsed)".
    """
    units = [f"{step.split(' ', 1)[1]} ({step.split(' ', 1)[0]})" for step in pending]
    step = f"compiling {', '.join(units)}" if units else "linking"
    return f"building {module}: {step} ({elapsed:.0f} s elapsed)"


def run_ninja(ninja: str, plan: BuildPlan, staging: Path) -> float:
    """Build; print which TU is compiling and the elapsed time. Returns the build's seconds."""
    if _stopping.is_set():
        raise BuildError(f"building {plan.module}: interrupted before it started")
    write_ninja(plan, staging)
    pending = _step_names(plan)
    if plan.announce:
        say(f"building {plan.module}: {', '.join(src.name for src in plan.sources)} "
            f"(up to {plan.jobs} compiler process(es) for this module, MAX_JOBS)")
    start = time.monotonic()
    env = dict(os.environ, NINJA_STATUS="[%f/%t] ")
    # Its own process group: terminate_builds() can stop ninja and the compilers it started, all at once.
    proc = subprocess.Popen(
        [ninja, "-C", str(staging), "-j", str(plan.jobs)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )
    with _running_lock:
        _running.add(proc)
        if _stopping.is_set():  # stopped between the check above and the start
            os.killpg(proc.pid, signal.SIGKILL)
    output: list[str] = []
    try:
        # ninja writing to a pipe reports a step when it finishes, so what is still pending is what compiles now.
        with Heartbeat(lambda t: describe_progress(plan.module, list(pending), t), period=HEARTBEAT_SECONDS):
            assert proc.stdout is not None
            for line in proc.stdout:
                output.append(line)
                if line.startswith("[") and "] " in line:
                    done = line.split("] ", 1)[1].strip()
                    if done in pending:
                        pending.remove(done)
            proc.wait()
    finally:
        if proc.poll() is None:  # interrupted while reading: do not leave the compilers running
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with _running_lock:
            _running.discard(proc)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise BuildError(f"building {plan.module} failed after {seconds:.0f} s:\n{''.join(output)[-20000:]}")
    if plan.announce:
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
