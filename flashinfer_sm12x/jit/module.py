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
from ..errors import BuildError, CacheSecurityError, ToolchainError
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

    def include_roots(self) -> tuple[tuple[str, Path], ...]:
        """(logical name, real path) of every include directory, in -I order; the key holds only the names."""
        roots: list[tuple[str, Path]] = [("pkg/include", INCLUDE_DIR), ("pkg/csrc", CSRC_DIR)]
        roots += [(f"extra{i}", d) for i, d in enumerate(self.extra_include_dirs)]
        if self.uses_cutlass:
            roots += toolchain.cutlass_roots()
        roots += toolchain.tvm_ffi_roots()
        seen: set[Path] = set()
        unique = []
        for label, path in roots:
            real = Path(os.path.realpath(path))
            if real not in seen:  # tvm_ffi's dlpack headers may sit in its include dir
                seen.add(real)
                unique.append((label, real))
        return tuple(unique)

    def include_dirs(self) -> tuple[Path, ...]:
        return tuple(path for _, path in self.include_roots())

    def header_roots(self) -> dict[str, Path]:
        """Logical include root -> where it is installed here (to re-hash a manifest's headers)."""
        return dict(self.include_roots())

    def portable_facts(self) -> dict[str, str]:
        """Versions that decide the binary and are known without a compiler (part of the source key)."""
        facts = {"package": __version__, "tvm_ffi": toolchain.tvm_ffi_version()}
        if self.uses_cutlass:
            facts["cutlass"] = toolchain.find_cutlass().version_str
        return facts

    def compiler_facts(self) -> dict[str, str]:
        """The compilers' versions (part of the full key; needs the compilers).

        Raises
        ------
        ToolchainError
            nvcc (for a CUDA module) or the host C++ compiler is missing.
        """
        facts = {"cxx": toolchain.cxx_version(toolchain.find_cxx())}
        if self.target is not None:
            facts["nvcc"] = toolchain.find_nvcc().version_text
        return facts

    def local_compilers(self) -> dict[str, str] | None:
        """compiler_facts(), or None where a compiler is missing (a deployment without the toolkit)."""
        try:
            return self.compiler_facts()
        except ToolchainError:
            return None

    def toolchain_facts(self) -> dict[str, str]:
        facts = {**self.portable_facts(), **self.compiler_facts()}
        if self.target is not None:
            major, minor = toolchain.find_nvcc().version
            facts["cuda"] = f"{major}.{minor}"
        return facts

    def cuda_flags(self, *, portable: bool = False) -> tuple[str, ...]:
        """nvcc's flags; `portable`: with each include directory's logical name instead of its path (the key)."""
        if self.target is None:
            return ()
        inc = tuple(f"-I{{{label}}}" if portable else f"-I{path}" for label, path in self.include_roots())
        return (*COMMON_CUDA_FLAGS, self.target.gencode, *self.extra_cuda_flags, *inc)

    def cxx_flags(self, *, portable: bool = False) -> tuple[str, ...]:
        inc = tuple(f"-I{{{label}}}" if portable else f"-I{path}" for label, path in self.include_roots())
        return (*COMMON_CXX_FLAGS, *inc)

    def ldflags(self, *, portable: bool = False) -> tuple[str, ...]:
        if self.target is None:
            return ()
        lib = "{cuda}/lib64" if portable else str(toolchain.find_nvcc().cuda_home / "lib64")
        # The CUDA runtime linked statically, no rpath: a module does not depend on where the build machine's
        # toolkit was, nor on a libcudart of the same major being loaded (torch's may be another, or a CPU build
        # has none). The static runtime opens the driver (libcuda) itself at the first CUDA call, so loading a
        # module needs no driver and linking it needs none (CPU build machines have no libcuda).
        if env.cudart() == "shared":  # by soname, no rpath: the libcudart.so.<major> the process loaded
            return (f"-L{lib}", "-lcudart")
        return (f"-L{lib}", "-lcudart_static", "-ldl", "-lrt", "-lpthread")

    def source_key(self) -> str:
        """What decides the binary apart from the compilers and the headers' contents, with no install path in it:
        the module directory's name and the cache lookup (computable without any compiler)."""
        return cache.sha256_text(json.dumps({
            "op": self.op, "group": self.group, "target": self.target_name,
            "sources": [(s.name, s.text) for s in self.sources],
            "cuda_flags": self.cuda_flags(portable=True), "cxx_flags": self.cxx_flags(portable=True),
            "ldflags": self.ldflags(portable=True), "versions": self.portable_facts(),
        }, sort_keys=True))

    base_key = source_key  # the name this key had before it became relocatable

    @property
    def name(self) -> str:
        return f"{self.op}_{self.group}_{self.target_name}_{self.source_key()[:10]}"


_loaded: dict[str, Any] = {}
_loaded_lock = threading.Lock()


def module_dir_named(target_name: str, name: str, root: Path | None = None) -> Path:
    """<root>/<version>/<target>/<name>, creating (0700) and checking every directory above it."""
    root = cache.ensure_private_dir(root or cache.default_root())
    version_dir = cache.ensure_private_dir(root / cache.version_dir_name())
    arch_dir = cache.ensure_private_dir(version_dir / target_name)
    return arch_dir / name


def module_dir_for(spec: ModuleSpec, root: Path | None = None) -> Path:
    return module_dir_named(spec.target_name, spec.name, root)


def verify_spec(spec: ModuleSpec, module_dir: Path) -> tuple[Path | None, str]:
    """cache.verify for `spec`'s module at `module_dir` against this installation's headers and compilers."""
    return cache.verify(module_dir, spec.source_key(), spec.header_roots(), spec.local_compilers())


def install_bundled(spec: ModuleSpec, root: Path | None = None) -> bool:
    """Install `spec` from an installed kernel bundle into the cache if one holds it and nothing verified is there
    yet; no compiler is needed. Returns whether a bundle's copy was installed (False: already cached, or no bundle
    holds it)."""
    check_layout()
    module_dir = module_dir_for(spec, root)
    if verify_spec(spec, module_dir)[0] is not None:
        return False
    with build_lock(module_dir.parent / f"{spec.name}.lock", spec.name):
        if verify_spec(spec, module_dir)[0] is not None:
            return False
        from . import bundles

        return bundles.install_from_bundles(spec, module_dir) and verify_spec(spec, module_dir)[0] is not None


def build_module(spec: ModuleSpec, root: Path | None = None, *, announce: bool = True) -> Path:
    """Find `spec` verified in the cache, else in an installed kernel bundle, else build it.

    Parameters
    ----------
    spec
        The module.
    root
        The cache root (default: the configured cache).
    announce
        Print the build's own start / end lines (prebuild prints one line per module instead).

    Returns
    -------
    Path
        The verified artifact.
    """
    check_layout()
    module_dir = module_dir_for(spec, root)
    artifact, why = verify_spec(spec, module_dir)
    if artifact is not None:
        return artifact
    with build_lock(module_dir.parent / f"{spec.name}.lock", spec.name):
        artifact, why = verify_spec(spec, module_dir)  # another process may have finished it
        if artifact is not None:
            return artifact
        from . import bundles  # the read-only lookup before any compiler is needed

        if bundles.install_from_bundles(spec, module_dir):
            artifact, why = verify_spec(spec, module_dir)
            if artifact is not None:
                return artifact
        if spec.target is not None:
            check_nvcc_supports(spec.target, toolchain.find_nvcc().version)
        if why != "not built":
            warnings.warn(f"flashinfer_sm12x: discarding cached {spec.name} and rebuilding: {why}", stacklevel=3)
        discard(module_dir)
        _build_and_install(spec, module_dir, announce)
    artifact, why = verify_spec(spec, module_dir)
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


def discard(module_dir: Path) -> None:
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


def _build_and_install(spec: ModuleSpec, module_dir: Path, announce: bool = True) -> None:
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
        nvcc = toolchain.find_nvcc() if spec.target is not None else None
        plan = BuildPlan(
            module=spec.name, sources=tuple(paths), nvcc=str(nvcc.path) if nvcc else None, cxx=toolchain.find_cxx(),
            cuda_flags=spec.cuda_flags(), cxx_flags=spec.cxx_flags(), ldflags=spec.ldflags(),
            jobs=env.max_jobs(), announce=announce,
        )
        seconds = run_ninja(toolchain.find_ninja(), plan, staging)
        roots = spec.include_roots()
        cuda_home = nvcc.cuda_home if nvcc else None
        headers = {cache.logical_header(p, roots, cuda_home): cache.sha256_file(p)
                   for p in sorted(read_depfiles(staging))}
        facts = spec.toolchain_facts()
        key = cache.full_key(spec.source_key(), headers, cache.compiler_facts_of(facts))
        artifact_name = f"{spec.name}.{key[:12]}.so"
        os.chmod(staging / ARTIFACT, 0o700)
        digest = cache.sha256_file(staging / ARTIFACT)
        cache.ensure_private_dir(module_dir)
        installed = module_dir / artifact_name
        os.replace(staging / ARTIFACT, installed)
        build_paths = {label: str(path) for label, path in roots}
        if cuda_home is not None:
            build_paths["cuda"] = str(cuda_home)
        manifest = cache.Manifest(
            module=spec.name, op=spec.op, target=spec.target_name, source_key=spec.source_key(), key=key,
            artifact=artifact_name, artifact_sha256=digest, headers=headers, toolchain=facts,
            built_at=cache.now_iso(), build_seconds=round(seconds, 2), origin="built", build_paths=build_paths,
        )
        try:
            manifest.write(module_dir, staging)  # the commit point: last
        except BaseException:
            # No manifest names the artifact (a full disk, an interrupt): leave no half-installed module behind.
            installed.unlink(missing_ok=True)
            raise
        for old in module_dir.glob("*.so"):
            if old.name != artifact_name:
                old.unlink()
        if announce:
            say(f"installed {spec.name} ({len(headers)} headers hashed)")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
