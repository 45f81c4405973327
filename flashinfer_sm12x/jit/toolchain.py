# SPDX-License-Identifier: Apache-2.0
"""Finding the tools a build needs: nvcc, the host C++ compiler, ninja, CUTLASS, tvm_ffi, cuobjdump."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import env
from ..errors import ToolchainError

MIN_CUTLASS = (4, 5, 0)


@dataclass(frozen=True)
class Nvcc:
    path: Path
    version: tuple[int, int]
    version_text: str  # the full `nvcc --version` release line, part of every cache key
    cuda_home: Path  # the toolkit whose lib64/libcudart.so modules link against


@dataclass(frozen=True)
class Cutlass:
    include_dirs: tuple[Path, ...]  # cutlass/include and, where present, tools/util/include
    version: tuple[int, int, int]
    source: str  # where it came from, for `doctor`

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))


def find_nvcc() -> Nvcc:
    override = env.path_from_env(env.NVCC, kind="file")
    candidates: list[Path] = []
    if override is not None:
        candidates = [override]
    else:
        for var in ("CUDA_HOME", "CUDA_PATH"):
            if os.environ.get(var):
                candidates.append(Path(os.environ[var]) / "bin" / "nvcc")
        which = shutil.which("nvcc")
        if which:
            candidates.append(Path(which))
        candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return _nvcc_version(str(Path(os.path.realpath(cand))))
    raise ToolchainError(
        "nvcc was not found (looked at $FLASHINFER_SM12X_NVCC, $CUDA_HOME/bin, PATH, /usr/local/cuda/bin). "
        "Install the CUDA toolkit >= 12.8 (>= 12.9 for sm_121a) or set FLASHINFER_SM12X_NVCC=/abs/path/to/nvcc."
    )


@functools.cache
def _nvcc_version(path: str) -> Nvcc:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"could not run {path} --version: {exc}") from exc
    match = re.search(r"release (\d+)\.(\d+)", out)
    if not match:
        raise ToolchainError(f"could not read the CUDA release from `{path} --version`:\n{out}")
    line = next((ln for ln in out.splitlines() if "release" in ln), out.strip())
    build = next((ln for ln in out.splitlines() if ln.startswith("Build")), "")
    return Nvcc(Path(path), (int(match.group(1)), int(match.group(2))), f"{line.strip()} {build.strip()}",
                _cuda_home(Path(path)))


def _cuda_home(nvcc: Path) -> Path:
    # nvcc may be a wrapper script (e.g. /usr/local/bin/nvcc): look for the toolkit that holds libcudart.
    candidates = [Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates += [nvcc.parent.parent, Path("/usr/local/cuda")]
    for home in candidates:
        if (home / "include" / "cuda_runtime.h").is_file() and any((home / "lib64").glob("libcudart.so*")):
            return Path(os.path.realpath(home))
    raise ToolchainError(f"found {nvcc} but no CUDA toolkit (include/cuda_runtime.h, lib64/libcudart.so) beside it; "
                         "set CUDA_HOME to the toolkit's root.")


def find_cxx() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise ToolchainError("no host C++ compiler found: install g++ (Debian: apt-get install g++) or set CXX.")
    return cxx


@functools.cache
def cxx_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"could not run {cxx} --version: {exc}") from exc


def find_ninja() -> str:
    try:
        import ninja  # the PyPI package ships the binary

        path = Path(ninja.BIN_DIR) / "ninja"
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    which = shutil.which("ninja")
    if which:
        return which
    raise ToolchainError("ninja was not found: pip install ninja")


def find_cutlass() -> Cutlass:
    override = env.path_from_env(env.CUTLASS_DIR, kind="dir")
    if override is not None:
        root = override
        source = f"${env.CUTLASS_DIR} ({override})"
        if (root / "include" / "cutlass").is_dir():
            include = root / "include"
        elif (root / "cutlass").is_dir():  # pointed straight at include/
            include, root = root, root.parent
        else:
            raise ToolchainError(
                f"{env.CUTLASS_DIR}={override} holds no cutlass/ headers; point it at a CUTLASS checkout "
                "(the folder with include/cutlass/version.h)."
            )
    else:
        root = _flashinfer_data_dir() / "cutlass"
        include = root / "include"
        source = f"flashinfer-python's bundled CUTLASS ({root})"
        if not (include / "cutlass").is_dir():
            raise ToolchainError(
                "CUTLASS headers were not found: install flashinfer-python==0.7.2.post1 (it bundles CUTLASS 4.5.0) "
                f"or set {env.CUTLASS_DIR} to a CUTLASS >= 4.5 checkout."
            )
    version = _cutlass_version(include / "cutlass" / "version.h")
    if version < MIN_CUTLASS:
        raise ToolchainError(
            f"CUTLASS {'.'.join(map(str, version))} from {source} is older than 4.5: its SM120 block-scaled builder "
            "lacks tile N < 32, SFB padding for N < 128 and scheduler-aware stage counts. "
            f"Use flashinfer-python 0.7.2.post1's bundled 4.5.0 (unset {env.CUTLASS_DIR}) or a newer checkout."
        )
    dirs = [include]
    util = root / "tools" / "util" / "include"
    if util.is_dir():
        dirs.append(util)
    return Cutlass(tuple(dirs), version, source)


def _flashinfer_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("flashinfer")
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainError(
            "flashinfer-python is not installed; pip install flashinfer-python==0.7.2.post1 "
            f"(or set {env.CUTLASS_DIR} to a CUTLASS >= 4.5 checkout)."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _cutlass_version(version_h: Path) -> tuple[int, int, int]:
    text = version_h.read_text()
    parts = []
    for name in ("MAJOR", "MINOR", "PATCH"):
        match = re.search(rf"#define CUTLASS_{name} (\d+)", text)
        if not match:
            raise ToolchainError(f"could not read CUTLASS_{name} from {version_h}")
        parts.append(int(match.group(1)))
    return (parts[0], parts[1], parts[2])


def tvm_ffi_include_dirs() -> tuple[Path, ...]:
    try:
        import tvm_ffi.libinfo as libinfo
    except ImportError as exc:
        raise ToolchainError("apache-tvm-ffi is not installed: pip install 'apache-tvm-ffi>=0.1.11,<0.2'") from exc
    dirs = {Path(libinfo.find_include_path()), Path(libinfo.find_dlpack_include_path())}
    return tuple(sorted(dirs))


def tvm_ffi_roots() -> tuple[tuple[str, Path], ...]:
    """tvm_ffi's include directories with the logical names the cache key uses instead of their paths."""
    import tvm_ffi.libinfo as libinfo

    return (("tvm_ffi/include", Path(libinfo.find_include_path())),
            ("tvm_ffi/dlpack", Path(libinfo.find_dlpack_include_path())))


def cutlass_roots(cutlass: Cutlass | None = None) -> tuple[tuple[str, Path], ...]:
    """CUTLASS's include directories with logical names (`cutlass/include`, `cutlass/util`)."""
    cutlass = cutlass or find_cutlass()
    labels = ("cutlass/include", "cutlass/util")
    return tuple(zip(labels, cutlass.include_dirs, strict=False))


def tvm_ffi_version() -> str:
    import tvm_ffi

    return str(tvm_ffi.__version__)


def find_sass_tools() -> tuple[Path, Path]:
    """(cuobjdump, nvdisasm): PyPI's nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm, else the toolkit's."""
    found: dict[str, Path] = {}
    for tool in ("cuobjdump", "nvdisasm"):
        candidates: list[Path] = []
        try:
            import nvidia  # namespace package of nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm

            for base in nvidia.__path__:
                candidates += sorted(Path(base).glob(f"*/bin/{tool}"))
        except ImportError:
            pass
        which = shutil.which(tool)
        if which:
            candidates.append(Path(which))
        with contextlib.suppress(ToolchainError):
            candidates.append(find_nvcc().path.parent / tool)
        hit = next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
        if hit is None:
            raise ToolchainError(
                f"{tool} was not found: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm (SASS inspection)."
            )
        found[tool] = hit
    return found["cuobjdump"], found["nvdisasm"]
