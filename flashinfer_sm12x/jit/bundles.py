# SPDX-License-Identifier: Apache-2.0
"""Kernel bundles: prebuilt modules installed as a package, found before anything is compiled.

A bundle is an unpacked kernel archive (archive.py: an index and modules/<target>/<module>/...) in a directory.
The loader looks, on a cache miss and before building, in
  * every directory of $FLASHINFER_SM12X_BUNDLE_PATH (absolute, separated by ':'), then
  * every installed package's entry point in the group `flashinfer_sm12x.kernel_bundles`, whose object is the
    bundle's directory (a str or Path) or a function returning it (scripts/build_bundle.py makes such wheels,
    e.g. flashinfer-sm12x-kernels-sm120a).
Bundles are only read. A module found there is checked like an imported one (hashes, target, CUDA major, the
headers it was built from) and copied into the private cache (origin "bundle"), which is then what is loaded:
the cache's protections apply to it as to any module. Bundle files must be regular files owned by this user or
root and not writable by others (a system-wide site-packages is root's); anything else is skipped with a warning.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from .. import env
from ..errors import ArchiveError, ConfigError
from . import archive

if TYPE_CHECKING:
    from .module import ModuleSpec

BUNDLE_PATH = "FLASHINFER_SM12X_BUNDLE_PATH"
ENTRY_POINT_GROUP = "flashinfer_sm12x.kernel_bundles"


@dataclass(frozen=True)
class Bundle:
    name: str  # the entry point's name, or the directory for $FLASHINFER_SM12X_BUNDLE_PATH
    path: Path


def _trusted_owners() -> tuple[int, ...]:
    return (os.getuid(), 0)


def find_bundles() -> list[Bundle]:
    """Every bundle directory this process can see, in search order.

    Raises
    ------
    ConfigError
        An entry of $FLASHINFER_SM12X_BUNDLE_PATH is relative or not a directory.
    """
    found: list[Bundle] = []
    for raw in os.environ.get(BUNDLE_PATH, "").split(os.pathsep):
        if not raw:
            continue
        if not os.path.isabs(raw) or not os.path.isdir(raw):
            raise ConfigError(f"{BUNDLE_PATH} entry {raw!r} is not an absolute path to a directory.")
        found.append(Bundle(raw, Path(os.path.realpath(raw))))
    found += _entry_point_bundles()
    return found


@functools.cache
def _entry_point_bundles() -> tuple[Bundle, ...]:
    bundles = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            path = obj() if callable(obj) else obj
            bundles.append(Bundle(ep.name, Path(os.path.realpath(str(path)))))
        except Exception as exc:  # a broken bundle package must not stop kernels from building
            warnings.warn(f"flashinfer_sm12x: kernel bundle {ep.name!r} cannot be loaded: {exc}", stacklevel=2)
    return tuple(bundles)


@functools.cache
def _read_bundle(path: Path) -> dict[str, archive.PackedModule]:
    _, modules = archive.read_tree(path, trusted_owners=_trusted_owners())
    return modules


def clear_bundle_cache() -> None:
    """Forget the bundles read by this process (after installing one, or in tests)."""
    _entry_point_bundles.cache_clear()
    _read_bundle.cache_clear()


def bundle_contents(bundle: Bundle) -> dict[str, archive.PackedModule]:
    """The modules of one bundle by name (read and structurally checked once per process)."""
    return _read_bundle(bundle.path)


def install_from_bundles(spec: ModuleSpec, module_dir: Path) -> bool:
    """Copy `spec`'s module from the first bundle that has a verifiable one into `module_dir` (the caller holds
    its build lock). Returns whether one was installed."""
    try:
        bundles = find_bundles()
    except ConfigError as exc:
        warnings.warn(f"flashinfer_sm12x: {exc}", stacklevel=3)
        return False
    if not bundles:
        return False
    source_key = spec.source_key()
    for bundle in bundles:
        try:
            packed = bundle_contents(bundle).get(spec.name)
            if packed is None or packed.manifest.source_key != source_key:
                continue
            roots = spec.header_roots()
            archive.check_module(packed, roots=roots, cuda_major=archive.local_cuda_major(),
                                 targets=[spec.target] if spec.target else None, gpu=None,
                                 where=f"bundle {bundle.name}")
            archive.install_packed(packed, module_dir, origin="bundle", source=bundle.name, roots=roots)
        except ArchiveError as exc:
            warnings.warn(f"flashinfer_sm12x: not using bundle {bundle.name} for {spec.name}: {exc}", stacklevel=3)
            continue
        if not env.quiet():
            from .progress import say

            say(f"installed {spec.name} from kernel bundle {bundle.name} (no compile)")
        return True
    return False
