# SPDX-License-Identifier: Apache-2.0
"""Environment variables that name paths: resolved to absolute real paths, never silently defaulted.

A relative path or a path that does not exist is an error (a typo must not fall back to another directory,
and a relative path would change meaning with the working directory).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

CACHE_DIR = "FLASHINFER_SM12X_CACHE_DIR"
CUTLASS_DIR = "FLASHINFER_SM12X_CUTLASS_DIR"
NVCC = "FLASHINFER_SM12X_NVCC"
ARCH = "FLASHINFER_SM12X_ARCH"
CUDA_ARCH_LIST = "FLASHINFER_CUDA_ARCH_LIST"
MAX_JOBS = "MAX_JOBS"
QUIET = "FLASHINFER_SM12X_QUIET"
# Diagnosis only: "1" lets our bindings release the GIL during a call, as tvm_ffi does by default (see
# jit/module.HostSerialModule for why they do not).
RELEASE_GIL = "FLASHINFER_SM12X_RELEASE_GIL"
# How modules link the CUDA runtime: "static" (default: relocatable, no libcudart needed at run time) or "shared"
# (libcudart.so.<major> by soname, no rpath: the copy the process already loaded, e.g. torch's). A different value
# builds differently named modules, so the two never share a cache entry.
CUDART = "FLASHINFER_SM12X_CUDART"

PATH_VARIABLES = (CACHE_DIR, CUTLASS_DIR, NVCC)


def path_from_env(name: str, *, kind: str) -> Path | None:
    """The real absolute path named by environment variable `name`, or None when it is unset or empty.

    kind is "dir" or "file": what the path must be.
    """
    raw = os.environ.get(name, "")
    if not raw:
        return None
    if not os.path.isabs(raw):
        raise ConfigError(f"{name}={raw!r} is a relative path; set it to an absolute path.")
    real = Path(os.path.realpath(raw))
    if not real.exists():
        raise ConfigError(f"{name}={raw!r} does not exist; create it or unset {name}.")
    if kind == "dir" and not real.is_dir():
        raise ConfigError(f"{name}={raw!r} is not a directory.")
    if kind == "file" and not real.is_file():
        raise ConfigError(f"{name}={raw!r} is not a file.")
    return real


def max_jobs() -> int:
    raw = os.environ.get(MAX_JOBS, "")
    if not raw:
        return 2  # one CUTLASS TU takes ~5.5 GB of host memory
    try:
        jobs = int(raw)
    except ValueError:
        raise ConfigError(f"{MAX_JOBS}={raw!r} is not an integer.") from None
    if jobs < 1:
        raise ConfigError(f"{MAX_JOBS}={raw!r} must be at least 1.")
    return jobs


def quiet() -> bool:
    return os.environ.get(QUIET, "") not in ("", "0")


def cudart() -> str:
    """How modules link the CUDA runtime: "static" (default) or "shared" (FLASHINFER_SM12X_CUDART)."""
    raw = os.environ.get(CUDART, "") or "static"
    if raw not in ("static", "shared"):
        raise ConfigError(f"{CUDART}={raw!r} must be 'static' or 'shared'.")
    return raw


def release_gil() -> bool:
    """Whether our bindings release the GIL during calls (FLASHINFER_SM12X_RELEASE_GIL=1; diagnosis only)."""
    return os.environ.get(RELEASE_GIL, "") not in ("", "0")
