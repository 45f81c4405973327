# SPDX-License-Identifier: Apache-2.0
"""A JIT module: what to build (ModuleSpec), its cache key, and build-or-load with verification."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import env
from .._version import __version__
from ..errors import BuildError, CacheSecurityError
from ..paths import CSRC_DIR, INCLUDE_DIR, check_layout
from . import cache, toolchain
from .arch import Target, check_nvcc_supports
from .build import ARTIFACT, BuildPlan, read_depfiles, run_ninja
from .lock import build_lock
from .progress import say

HOST_TARGET = "host"

COMMON_CUDA_FLAGS = (
    "-std=c++17", "-O3", "-DNDEBUG", "--expt-relaxed-constexpr", "--compiler-options=-fPIC",
    "-DCUTLASS_ENABLE_TENSOR_CORE_MMA=1", "-Xptxas=-warn-spills",
)
COMMON_CXX_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-DNDEBUG")


@dataclass(frozen=True)
class Source:
    name: str  # file name inside the module, e.g. "mma_probe.cu"
    text: str


@dataclass(frozen=True)
class ModuleSpec:
    """One module = one (op, config group, target). `group` is a readable name of the configs inside."""

    op: str
    group: str
    target: Target | None  # None: host-only C++ (no CUDA)
    sources: tuple[Source, ...]
    extra_include_dirs: tuple[Path, ...] = ()
    extra_cuda_flags: tuple[str, ...] = ()
    uses_cutlass: bool = False

    @property
    def target_name(self) -> str:
        return self.target.name if self.target else HOST_TARGET

    def include_dirs(self) -> tuple[Path, ...]:
        dirs = [INCLUDE_DIR, CSRC_DIR, *self.extra_include_dirs]
        if self.uses_cutlass:
            dirs += toolchain.find_cutlass().include_dirs
        dirs += toolchain.tvm_ffi_include_dirs()
        return tuple(Path(os.path.realpath(d)) for d in dirs)

    def toolchain_facts(self) -> dict[str, str]:
        facts = {
            "package": __version__,
            "cxx": toolchain.cxx_version(toolchain.find_cxx()),
            "tvm_ffi": toolchain.tvm_ffi_version(),
        }
        if self.target is not None:
            facts["nvcc"] = toolchain.find_nvcc().version_text
        if self.uses_cutlass:
            facts["cutlass"] = toolchain.find_cutlass().version_str
        return facts

    def cuda_flags(self) -> tuple[str, ...]:
        if self.target is None:
            return ()
        inc = tuple(f"-I{d}" for d in self.include_dirs())
        return (*COMMON_CUDA_FLAGS, self.target.gencode, *self.extra_cuda_flags, *inc)

    def cxx_flags(self) -> tuple[str, ...]:
        return (*COMMON_CXX_FLAGS, *(f"-I{d}" for d in self.include_dirs()))

    def ldflags(self) -> tuple[str, ...]:
        if self.target is None:
            return ()
        lib = toolchain.find_nvcc().cuda_home / "lib64"
        # libcudart only: CPU build machines have no libcuda, and driver calls resolve at run time.
        return (f"-L{lib}", "-lcudart", f"-Wl,-rpath,{lib}")

    def base_key(self) -> str:
        return cache.sha256_text(json.dumps({
            "op": self.op, "group": self.group, "target": self.target_name,
            "sources": [(s.name, s.text) for s in self.sources],
            "cuda_flags": self.cuda_flags(), "cxx_flags": self.cxx_flags(), "ldflags": self.ldflags(),
            "toolchain": self.toolchain_facts(),
        }, sort_keys=True))

    @property
    def name(self) -> str:
        return f"{self.op}_{self.group}_{self.target_name}_{self.base_key()[:10]}"


_loaded: dict[str, Any] = {}
_loaded_lock = threading.Lock()


def module_dir_for(spec: ModuleSpec, root: Path | None = None) -> Path:
    root = cache.ensure_private_dir(root or cache.default_root())
    version_dir = cache.ensure_private_dir(root / cache.version_dir_name())
    arch_dir = cache.ensure_private_dir(version_dir / spec.target_name)
    return arch_dir / spec.name


def build_module(spec: ModuleSpec, root: Path | None = None) -> Path:
    """Build (or find already built and verified) `spec`; returns the verified artifact's path."""
    check_layout()
    if spec.target is not None:
        check_nvcc_supports(spec.target, toolchain.find_nvcc().version)
    module_dir = module_dir_for(spec, root)
    base_key = spec.base_key()
    artifact, why = cache.verify(module_dir, base_key)
    if artifact is not None:
        return artifact
    with build_lock(module_dir.parent / f"{spec.name}.lock", spec.name):
        artifact, why = cache.verify(module_dir, base_key)  # another process may have finished it
        if artifact is not None:
            return artifact
        if why != "not built":
            warnings.warn(f"flashinfer_sm12x: discarding cached {spec.name} and rebuilding: {why}", stacklevel=3)
        _discard(module_dir)
        _build_and_install(spec, module_dir, base_key)
    artifact, why = cache.verify(module_dir, base_key)
    if artifact is None:
        raise BuildError(f"{spec.name} was built but does not verify: {why}")
    return artifact


class HostSerialModule:
    """A loaded module whose functions keep the Python GIL while they run.

    tvm_ffi releases the GIL during a call by default. Our bindings' host work is a few microseconds of argument
    checks, CUTLASS argument building, TMA descriptor encoding and a launch; run from several Python threads at once,
    that host path crashed the CUDA context (mm_fp4 from 8 threads on one stream: "illegal instruction"). Holding the
    GIL serialises it at no cost to a single caller, and every launch stays asynchronous. Functions are looked up
    once per name (tvm_ffi caches them on the module), so the setting sticks."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        function = getattr(self._module, name)
        if hasattr(function, "release_gil") and not env.release_gil():
            function.release_gil = False
        setattr(self, name, function)  # later lookups skip __getattr__
        return function


def load_module(spec: ModuleSpec, root: Path | None = None) -> Any:
    """Build if needed, verify, then load with tvm_ffi (as FlashInfer loads its JIT modules); the functions keep the
    GIL while they run (HostSerialModule)."""
    name = spec.name
    with _loaded_lock:
        if name in _loaded:
            return _loaded[name]
    artifact = build_module(spec, root)
    import tvm_ffi

    module = HostSerialModule(tvm_ffi.load_module(str(artifact)))
    cache.touch_last_used(artifact.parent)
    with _loaded_lock:
        return _loaded.setdefault(name, module)


def _discard(module_dir: Path) -> None:
    """Remove a rejected module directory (its parent is verified private, so this is ours to remove)."""
    if os.path.islink(module_dir):
        os.unlink(module_dir)
    elif os.path.lexists(module_dir):
        st = os.lstat(module_dir)
        if st.st_uid != os.getuid():
            raise CacheSecurityError(f"{module_dir} is owned by uid {st.st_uid}; remove it by hand.")
        shutil.rmtree(module_dir)


def _clean_stale_staging(arch_dir: Path, name: str) -> None:
    # Under the build lock no other process builds `name`, so leftovers are from killed builds.
    for stale in arch_dir.glob(f".build-{name}-*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def _build_and_install(spec: ModuleSpec, module_dir: Path, base_key: str) -> None:
    arch_dir = module_dir.parent
    if not os.access(arch_dir, os.W_OK):
        raise CacheSecurityError(f"JIT cache directory {arch_dir} is not writable; cannot build {spec.name}.")
    _clean_stale_staging(arch_dir, spec.name)
    staging = Path(tempfile.mkdtemp(prefix=f".build-{spec.name}-", dir=arch_dir))  # mode 0700
    try:
        paths = []
        for src in spec.sources:
            path = staging / src.name
            path.write_text(src.text)
            paths.append(path)
        nvcc = str(toolchain.find_nvcc().path) if spec.target is not None else None
        plan = BuildPlan(
            module=spec.name, sources=tuple(paths), nvcc=nvcc, cxx=toolchain.find_cxx(),
            cuda_flags=spec.cuda_flags(), cxx_flags=spec.cxx_flags(), ldflags=spec.ldflags(),
            jobs=env.max_jobs(),
        )
        seconds = run_ninja(toolchain.find_ninja(), plan, staging)
        headers = {str(p): cache.sha256_file(p) for p in sorted(read_depfiles(staging))}
        key = cache.full_key(base_key, headers)
        artifact_name = f"{spec.name}.{key[:12]}.so"
        os.chmod(staging / ARTIFACT, 0o700)
        digest = cache.sha256_file(staging / ARTIFACT)
        cache.ensure_private_dir(module_dir)
        os.replace(staging / ARTIFACT, module_dir / artifact_name)
        manifest = cache.Manifest(
            module=spec.name, op=spec.op, target=spec.target_name, base_key=base_key, key=key,
            artifact=artifact_name, artifact_sha256=digest, headers=headers,
            toolchain=spec.toolchain_facts(), built_at=cache.now_iso(), build_seconds=round(seconds, 2),
        )
        manifest.write(module_dir, staging)  # the commit point: last
        for old in module_dir.glob("*.so"):
            if old.name != artifact_name:
                old.unlink()
        say(f"installed {spec.name} ({len(headers)} headers hashed)")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
