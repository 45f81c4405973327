# SPDX-License-Identifier: Apache-2.0
"""`flashinfer-sm12x doctor`: what this machine can build and run, and one line per known problem with its fix."""

from __future__ import annotations

import contextlib
import io
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import env, paths
from ._version import __version__
from .errors import ArchError, Sm12xError
from .jit import arch, cache, toolchain

MIN_CUDNN_MXFP4 = 91400  # FlashInfer's cuDNN MXFP4 GEMM backend (the baseline we compare with)
# FlashInfer releases the test suite runs against: vLLM 0.33's pin, and the newest 0.7.
TESTED_FLASHINFER = ("0.7.2.post1", "0.7.4")


@dataclass
class Report:
    facts: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    can: list[str] = field(default_factory=list)
    cannot: list[str] = field(default_factory=list)

    def fact(self, key: str, value: str) -> None:
        self.facts.append((key, value))


def _gpu(report: Report) -> tuple[int, int] | None:
    try:
        import torch
    except ImportError:
        report.fact("torch", "not installed")
        report.problems.append("torch is not installed: pip install torch (>= 2.8)")
        return None
    report.fact("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none: CPU build'})")
    if not torch.cuda.is_available():
        report.fact("GPU", "none visible (CPU-only machine)")
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        report.fact("cuDNN", str(cudnn) if cudnn else "not available (torch has no cuDNN here)")
        return None
    cc = torch.cuda.get_device_capability()
    props = torch.cuda.get_device_properties(0)
    report.fact("GPU", f"{props.name}, compute capability {cc[0]}.{cc[1]}, {props.multi_processor_count} SMs")
    try:
        import pynvml

        pynvml.nvmlInit()
        report.fact("driver", pynvml.nvmlSystemGetDriverVersion())
    except Exception:
        report.fact("driver", "unknown (nvidia-ml-py not usable)")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    report.fact("cuDNN", str(cudnn) if cudnn else "not available")
    if cc[0] == 12 and (cudnn is None or cudnn < MIN_CUDNN_MXFP4):
        report.problems.append(
            f"cuDNN {cudnn or 'missing'} < 9.14: FlashInfer's cudnn MXFP4 mm_fp4 backend (the comparison baseline) "
            "needs cuDNN >= 9.14. Fix: pip install -U 'nvidia-cudnn-cu13>=9.14' (or -cu12)."
        )
    return cc


def _suffix_problems(report: Report) -> None:
    for var in (env.ARCH, env.CUDA_ARCH_LIST, "TORCH_CUDA_ARCH_LIST"):
        value = os.environ.get(var, "")
        if not value:
            continue
        report.fact(var, value)
        for token in value.replace(";", " ").replace(",", " ").split():
            bare = token.lower().removeprefix("sm_").replace("+ptx", "")
            if bare in ("12.0", "12.1", "120", "121"):
                fixed = f"{bare}a" if "." in bare else f"sm_{bare}a"
                report.problems.append(
                    f"{var} has {token!r} without the 'a'/'f' suffix: block-scaled FP4 kernels then fail to build "
                    f"('No compiled nvfp4 kernel', 'cvt.e2m1x2 not supported'). Fix: use {fixed!r} (or the 'f' "
                    "family target)."
                )


def _arch_variable(report: Report) -> None:
    """FLASHINFER_SM12X_ARCH must name supported targets: anything else makes every kernel call raise."""
    value = os.environ.get(env.ARCH, "")
    for token in value.replace(";", " ").replace(",", " ").split():
        try:
            arch.parse_target(token, correct_suffix=False)
        except ArchError as exc:
            bare = token.lower().removeprefix("sm_")
            if bare in ("12.0", "12.1", "120", "121"):
                continue  # the missing suffix is reported by _suffix_problems
            if bare in ("90", "9.0"):
                report.warnings.append(f"{env.ARCH} has {token!r}: it is taken as sm_90a (the emulation target); "
                                       "write sm_90a.")
                continue
            report.problems.append(f"{env.ARCH}={value!r} is not usable: {exc} Every kernel call raises until "
                                   f"it is fixed or unset.")


def _nvcc(report: Report, cc: tuple[int, int] | None) -> toolchain.Nvcc | None:
    try:
        nvcc = toolchain.find_nvcc()
    except Sm12xError as exc:
        report.fact("nvcc", "not found")
        report.problems.append(str(exc))
        return None
    report.fact("nvcc", f"{nvcc.path} (CUDA {nvcc.version[0]}.{nvcc.version[1]}, toolkit {nvcc.cuda_home})")
    buildable = []
    for name in arch.SUPPORTED:
        target = arch.parse_target(name)
        ok = nvcc.version >= target.min_nvcc
        buildable.append(f"{name}{'' if ok else ' (no: needs CUDA ' + '.'.join(map(str, target.min_nvcc)) + ')'}")
    report.fact("build targets", ", ".join(buildable))
    if nvcc.version < (12, 8):
        report.problems.append(f"nvcc {nvcc.version[0]}.{nvcc.version[1]} cannot build SM120 at all. Fix: install "
                               "CUDA >= 12.9 and set FLASHINFER_SM12X_NVCC or CUDA_HOME.")
    elif nvcc.version < (12, 9) and cc == (12, 1):
        report.problems.append("this DGX Spark (12.1) needs sm_121a, which nvcc < 12.9 cannot build. Fix: install "
                               "CUDA >= 12.9 and set FLASHINFER_SM12X_NVCC or CUDA_HOME.")
    return nvcc


def _target(report: Report, cc: tuple[int, int] | None) -> None:
    if cc is None:
        return
    try:
        # parse_target explains a corrected suffix on stderr; the report already says it once.
        with contextlib.redirect_stderr(io.StringIO()):
            target = arch.target_for_capability(cc)
        report.fact("kernel target", f"{target.name}{' (emulated MMA: correctness only)' if target.emulated else ''}")
    except Sm12xError as exc:
        report.problems.append(str(exc))  # e.g. SM120-only binaries requested on a 12.1 GPU


def _libraries(report: Report) -> None:
    try:
        from importlib.metadata import version

        flashinfer_version = version("flashinfer-python")
        report.fact("FlashInfer", flashinfer_version)
        if flashinfer_version not in TESTED_FLASHINFER:
            report.warnings.append(
                f"FlashInfer {flashinfer_version} is not a tested version ({' and '.join(TESTED_FLASHINFER)}): "
                "the integrations follow FlashInfer's signatures, which may have changed. "
                f"Fix: pip install flashinfer-python=={TESTED_FLASHINFER[-1]}")
    except Exception:
        report.fact("FlashInfer", "not installed")
        report.problems.append("flashinfer-python is not installed: pip install flashinfer-python==0.7.2.post1")
    try:
        cutlass = toolchain.find_cutlass()
        report.fact("CUTLASS", f"{cutlass.version_str} from {cutlass.source}")
    except Sm12xError as exc:
        report.fact("CUTLASS", "not usable")
        report.problems.append(str(exc))
    try:
        report.fact("tvm_ffi", toolchain.tvm_ffi_version())
    except Exception:
        report.problems.append("apache-tvm-ffi is not installed: pip install 'apache-tvm-ffi>=0.1.11,<0.2'")
    try:
        cuobjdump, _ = toolchain.find_sass_tools()
        report.fact("SASS tools", str(cuobjdump.parent))
    except Sm12xError as exc:
        report.fact("SASS tools", "missing (compile proofs cannot read SASS)")
        report.cannot.append(str(exc))


def _cache(report: Report, selftest: bool) -> None:
    for var in env.PATH_VARIABLES:
        if os.environ.get(var):
            try:
                kind = "file" if var == env.NVCC else "dir"
                report.fact(var, f"{os.environ[var]} -> {env.path_from_env(var, kind=kind)}")
            except Sm12xError as exc:
                report.problems.append(str(exc))
    try:
        root = cache.default_root()
        entries = cache.list_entries(root)
        size = sum(e.size_bytes for e in entries)
        report.fact("JIT cache", f"{root} ({len(entries)} modules, {size / 2**20:.1f} MiB)")
        if root.exists():
            cache.check_private_dir(root)
    except Sm12xError as exc:
        report.problems.append(str(exc))
        return
    per_target: dict[str, dict[str, int]] = {}
    for entry in entries:
        counts = per_target.setdefault(entry.target, {})
        counts[entry.origin] = counts.get(entry.origin, 0) + 1
    for target, counts in sorted(per_target.items()):
        report.fact(f"  {target}", ", ".join(f"{n} {origin}" for origin, n in sorted(counts.items())))
    _bundles(report)
    if selftest:
        _selftest(report)


def _bundles(report: Report) -> None:
    """Installed kernel bundles (prebuilt modules found before any compile), per target."""
    from .jit import bundles

    try:
        found = bundles.find_bundles()
    except Sm12xError as exc:
        report.problems.append(str(exc))
        return
    if not found:
        report.fact("kernel bundles", "none installed")
        return
    for bundle in found:
        try:
            modules = bundles.bundle_contents(bundle)
        except Sm12xError as exc:
            report.warnings.append(f"kernel bundle {bundle.name} ({bundle.path}) is not usable: {exc}")
            continue
        counts: dict[str, int] = {}
        for packed in modules.values():
            counts[packed.target] = counts.get(packed.target, 0) + 1
        listing = ", ".join(f"{target}: {n}" for target, n in sorted(counts.items())) or "empty"
        report.fact("kernel bundle", f"{bundle.name} ({bundle.path}): {listing} prebuilt module(s)")


def _selftest(report: Report) -> None:
    """Build and load the self-test module in a private temporary cache, quietly: the user's cache is left as it
    was and no build line is printed among the report's."""
    import shutil
    import tempfile

    from .jit.selftest import run_selftest

    start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="flashinfer_sm12x-doctor-"))  # 0700
    saved = {var: os.environ.get(var) for var in (env.CACHE_DIR, env.QUIET)}
    os.environ[env.CACHE_DIR], os.environ[env.QUIET] = str(tmp), "1"
    try:
        ok = run_selftest(42) == 42
        report.fact("JIT self-test", f"{'ok' if ok else 'WRONG ANSWER'} ({time.monotonic() - start:.1f} s: "
                                     "render, ninja, c++, verify, tvm_ffi load; in a temporary cache)")
        if not ok:
            report.problems.append("the JIT self-test module returned a wrong answer")
    except Sm12xError as exc:
        report.problems.append(f"JIT self-test failed: {exc}")
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        shutil.rmtree(tmp, ignore_errors=True)


def diagnose(selftest: bool = True) -> Report:
    report = Report()
    report.fact("flashinfer_sm12x", f"{__version__} (Python {platform.python_version()})")
    report.fact("kernel sources", f"{paths.layout()} ({paths.source_base()})")
    cc = _gpu(report)
    nvcc = _nvcc(report, cc)
    _suffix_problems(report)
    _arch_variable(report)
    _target(report, cc)
    _libraries(report)
    _cache(report, selftest)
    if nvcc is not None:
        report.can.append("compile and prebuild kernels for " + ", ".join(
            t for t in arch.SUPPORTED if nvcc.version >= arch.parse_target(t).min_nvcc))
    if cc is None:
        report.cannot.append("run any kernel (no GPU): tests marked cuda/sm12x/emulation skip here")
    elif cc[0] != 12:
        report.cannot.append(f"run native SM12x kernels on this {cc[0]}.{cc[1]} GPU"
                             + (" (FLASHINFER_SM12X_EMULATE=1 runs the emulated path)" if cc == (9, 0) else ""))
    else:
        report.can.append("run the native SM12x kernels and tests/sm12x")
    # Two checks can find one cause (an env variable read twice): say each problem once.
    report.problems = list(dict.fromkeys(report.problems))
    report.warnings = list(dict.fromkeys(report.warnings))
    return report


def render_report(report: Report) -> str:
    width = max(len(k) for k, _ in report.facts)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in report.facts]
    lines += ["", "Can do here:"] + [f"  + {c}" for c in report.can]
    if report.cannot:
        lines += ["Cannot do here:"] + [f"  - {c}" for c in report.cannot]
    if report.warnings:
        lines += ["", "Warnings:"] + [f"  ? {w}" for w in report.warnings]
    lines += ["", "Problems:" if report.problems else "Problems: none found"]
    lines += [f"  ! {p}" for p in report.problems]
    return "\n".join(lines)
