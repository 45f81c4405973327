# SPDX-License-Identifier: Apache-2.0
"""Kernel archives: built modules carried to another path, cache or machine (`cache export` / `cache import`).

An archive is one tar file (gzip-compressed when its name ends in .gz/.tgz):

    flashinfer_sm12x_archive.json                 the index: format, package version, toolchain, every module's
                                                   target and the sha256 of its manifest and artifact
    modules/<target>/<module>/manifest.json       the module's manifest (relocatable: logical header names)
    modules/<target>/<module>/<module>.<key>.so   the artifact

An unpacked archive (the same tree) is a kernel bundle (`bundles.py`). Import checks everything before it writes
anything: each member is a regular file or directory with a relative name inside the layout (no symlink, link,
device, absolute path or `..`); every hash agrees with the index and the manifests; each module's target can run
here; it was built with this machine's CUDA major version; the headers it was built from hash the same in this
installation. A refusal raises ArchiveError naming the check and leaves the cache as it was. Modules install like
builds (artifact, then manifest last, by rename from a private staging directory, under the module's build lock);
a module already in the cache that verifies is kept, one that does not is replaced by the verified copy.

Integrity, not authenticity: a consistent rewrite of an archive passes these checks. Pin the archive's sha256
(`cache import FILE --sha256 HEX`, printed by `cache export`) when the file crosses an untrusted channel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import platform
import shutil
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .._version import __version__
from ..errors import ArchiveError, ToolchainError
from ..paths import CSRC_DIR, INCLUDE_DIR
from . import cache, toolchain
from .arch import SUPPORTED, Target, parse_target
from .lock import build_lock

INDEX_NAME = "flashinfer_sm12x_archive.json"
ARCHIVE_FORMAT = 1
MODULES_DIR = "modules"
MAX_MEMBER_BYTES = 1 << 30  # far above any module (a few MB): a bound on what a crafted archive makes us read


@dataclass
class PackedModule:
    """One module read from an archive or a bundle, not yet trusted."""

    name: str
    target: str
    manifest: cache.Manifest
    manifest_bytes: bytes
    artifact_bytes: bytes


@dataclass
class ExportSummary:
    path: Path
    modules: list[str]
    size_bytes: int
    sha256: str
    seconds: float


@dataclass
class ImportSummary:
    installed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # already in the cache and verified: left as they were
    stale: list[str] = field(default_factory=list)  # skipped (skip_stale): built from other headers than these
    sha256: str = ""
    seconds: float = 0.0


def installed_roots() -> dict[str, Path]:
    """Every logical include root of this installation -> its real path (to re-hash an archive's headers)."""
    roots: dict[str, Path] = {"pkg/include": INCLUDE_DIR, "pkg/csrc": CSRC_DIR}
    with contextlib.suppress(ToolchainError):
        roots.update(toolchain.cutlass_roots())
    with contextlib.suppress(ImportError, ToolchainError):
        roots.update(toolchain.tvm_ffi_roots())
    return {label: Path(os.path.realpath(path)) for label, path in roots.items()}


def local_cuda_major() -> int | None:
    """The CUDA major version modules must match here: nvcc's where installed, else the CUDA torch's, else None
    (a CPU-only machine without the toolkit: nothing to compare with)."""
    try:
        return toolchain.find_nvcc().version[0]
    except ToolchainError:
        pass
    try:
        import torch

        cuda = torch.version.cuda
    except ImportError:
        return None
    return int(cuda.split(".")[0]) if cuda else None


def _gpu_capability() -> tuple[int, int] | None:
    try:
        import torch

        return torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    except Exception:  # no torch, or a broken driver: no GPU to check against
        return None


# ---------------------------------------------------------------------------------------------------- export


def export_archive(module_dirs: Sequence[Path], out: Path) -> ExportSummary:
    """Write the verified modules in `module_dirs` to the archive `out` (replaced atomically).

    Parameters
    ----------
    module_dirs
        Module directories in the cache, each verified by the caller (module.verify_spec).
    out
        The archive to write; gzip-compressed when it ends in .gz or .tgz.

    Returns
    -------
    ExportSummary
        The modules written, the archive's size and sha256.

    Raises
    ------
    ArchiveError
        No module given, or the modules were built by different CUDA toolkits.
    """
    start = time.monotonic()
    if not module_dirs:
        raise ArchiveError("format", "nothing to export: the plan has no module")
    entries: list[dict[str, str]] = []
    files: list[tuple[str, bytes]] = []
    toolchain_facts: dict[str, str] = {}
    for module_dir in module_dirs:
        manifest = cache.Manifest.read(module_dir)
        artifact = module_dir / manifest.artifact
        cache.check_private_file(artifact)
        data = artifact.read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest.artifact_sha256:
            raise ArchiveError("tampered", f"{artifact} no longer matches its manifest; rebuild it first")
        for key in ("cuda", "nvcc"):
            if key in manifest.toolchain and toolchain_facts.setdefault(key, manifest.toolchain[key]) != \
                    manifest.toolchain[key]:
                raise ArchiveError("toolchain", f"{manifest.module} was built by {manifest.toolchain[key]}, the "
                                                f"others by {toolchain_facts[key]}: one toolkit per archive")
        manifest_bytes = manifest.to_bytes()
        base = f"{MODULES_DIR}/{manifest.target}/{manifest.module}"
        files += [(f"{base}/{cache.MANIFEST}", manifest_bytes), (f"{base}/{manifest.artifact}", data)]
        entries.append({"name": manifest.module, "target": manifest.target, "artifact": manifest.artifact,
                        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
                        "artifact_sha256": manifest.artifact_sha256})
    index = {"format": ARCHIVE_FORMAT, "package": __version__, "created_at": cache.now_iso(),
             "host_machine": platform.machine(), "toolchain": toolchain_facts, "modules": entries}
    out = Path(os.path.abspath(out))
    mode = "w:gz" if out.name.endswith((".gz", ".tgz")) else "w"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp_name, mode) as tar:
            for name, payload in [(INDEX_NAME, json.dumps(index, indent=1, sort_keys=True).encode()), *files]:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(payload), 0o600, 0  # no build-time or owner facts
                tar.addfile(info, io.BytesIO(payload))
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    return ExportSummary(out, [e["name"] for e in entries], out.stat().st_size, cache.sha256_file(out),
                         time.monotonic() - start)


# ---------------------------------------------------------------------------------------------------- reading


def _check_member_name(name: str, is_dir: bool) -> None:
    path = PurePosixPath(name)
    if name.startswith("/") or path.is_absolute():
        raise ArchiveError("unsafe_member", f"archive member {name!r} is an absolute path")
    if ".." in path.parts or "\\" in name:
        raise ArchiveError("unsafe_member", f"archive member {name!r} climbs out of the archive (`..`)")
    parts = path.parts
    if name == INDEX_NAME:
        return
    if not parts or parts[0] != MODULES_DIR or len(parts) > 4 or (not is_dir and len(parts) != 4):
        raise ArchiveError("tampered", f"archive member {name!r} is outside the archive's layout")


def read_archive(path: Path) -> tuple[dict, dict[str, PackedModule], str]:
    """Read and structurally check an archive; nothing is written.

    Returns
    -------
    tuple
        (index, modules by name, the archive's sha256).

    Raises
    ------
    ArchiveError
        An unsafe member, a member outside the layout, a missing or malformed index, or hashes that disagree.
    """
    try:
        digest = cache.sha256_file(path)
        tar = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by the `with tar` below)
    except (OSError, tarfile.TarError) as exc:
        raise ArchiveError("format", f"{path} is not a readable kernel archive: {exc}") from exc
    files: dict[str, bytes] = {}
    with tar:
        for member in tar:
            if member.issym() or member.islnk():
                kind = "a symlink" if member.issym() else "a hard link"
                raise ArchiveError("unsafe_member", f"archive member {member.name!r} is {kind}")
            if not (member.isfile() or member.isdir()):
                raise ArchiveError("unsafe_member", f"archive member {member.name!r} is not a regular file")
            _check_member_name(member.name, member.isdir())
            if member.isdir():
                continue
            if member.name in files:
                raise ArchiveError("tampered", f"archive member {member.name!r} appears twice")
            if member.size > MAX_MEMBER_BYTES:
                raise ArchiveError("tampered", f"archive member {member.name!r} is {member.size} bytes")
            fh = tar.extractfile(member)
            assert fh is not None  # a regular file
            files[member.name] = fh.read()
    index, modules = _parse_tree(files, str(path))
    return index, modules, digest


def read_tree(base: Path, *, trusted_owners: tuple[int, ...]) -> tuple[dict, dict[str, PackedModule]]:
    """Read an unpacked archive (a kernel bundle's directory); only the files its index names are read, each a
    regular file (no symlink) of a trusted owner, not writable by others."""
    index_path = base / INDEX_NAME
    try:
        cache.check_private_file(index_path, trusted_owners=trusted_owners)
        index = json.loads(index_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ArchiveError("format", f"{base} is not a kernel bundle: {exc}") from exc
    _check_index(index, str(base))
    files: dict[str, bytes] = {INDEX_NAME: index_path.read_bytes()}
    for entry in index["modules"]:
        for file_name in (cache.MANIFEST, entry["artifact"]):
            rel = f"{MODULES_DIR}/{entry['target']}/{entry['name']}/{file_name}"
            _check_member_name(rel, False)
            member = base / rel
            try:
                cache.check_private_file(member, trusted_owners=trusted_owners)
            except OSError as exc:
                raise ArchiveError("tampered", f"bundle file {member} is missing: {exc}") from exc
            except cache.CacheSecurityError as exc:
                raise ArchiveError("unsafe_member", str(exc)) from exc
            files[rel] = member.read_bytes()
    return _parse_tree(files, str(base))


def _check_index(index: object, where: str) -> None:
    if not isinstance(index, dict) or index.get("format") != ARCHIVE_FORMAT or not isinstance(
            index.get("modules"), list):
        raise ArchiveError("format", f"{where}: not a flashinfer_sm12x kernel archive of format {ARCHIVE_FORMAT}")
    if index.get("package") != __version__:
        raise ArchiveError("format", f"{where} holds modules of flashinfer_sm12x {index.get('package')}; this is "
                                     f"{__version__} (modules are built from the package's own sources)")
    for entry in index["modules"]:
        names = ("name", "target", "artifact", "manifest_sha256", "artifact_sha256")
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in names):
            raise ArchiveError("tampered", f"{where}: malformed module entry {entry!r} in the index")
        if "/" in entry["name"] or "/" in entry["target"] or os.path.basename(entry["artifact"]) != entry["artifact"]:
            raise ArchiveError("unsafe_member", f"{where}: module entry {entry['name']!r} names a path")


def _parse_tree(files: dict[str, bytes], where: str) -> tuple[dict, dict[str, PackedModule]]:
    if INDEX_NAME not in files:
        raise ArchiveError("format", f"{where} has no {INDEX_NAME}: not a flashinfer_sm12x kernel archive")
    try:
        index = json.loads(files[INDEX_NAME])
    except ValueError as exc:
        raise ArchiveError("tampered", f"{where}: its index is not valid JSON: {exc}") from exc
    _check_index(index, where)
    modules: dict[str, PackedModule] = {}
    named: set[str] = {INDEX_NAME}
    for entry in index["modules"]:
        base = f"{MODULES_DIR}/{entry['target']}/{entry['name']}"
        manifest_name, artifact_name = f"{base}/{cache.MANIFEST}", f"{base}/{entry['artifact']}"
        named |= {manifest_name, artifact_name}
        if manifest_name not in files or artifact_name not in files:
            raise ArchiveError("tampered", f"{where}: module {entry['name']} is listed but its files are missing")
        manifest_bytes, artifact = files[manifest_name], files[artifact_name]
        if hashlib.sha256(manifest_bytes).hexdigest() != entry["manifest_sha256"]:
            raise ArchiveError("tampered", f"{where}: the manifest of {entry['name']} does not match the index")
        if hashlib.sha256(artifact).hexdigest() != entry["artifact_sha256"]:
            raise ArchiveError("tampered", f"{where}: the artifact of {entry['name']} does not match the index")
        try:
            manifest = cache.Manifest.from_bytes(manifest_bytes)
        except (ValueError, TypeError) as exc:
            raise ArchiveError("tampered", f"{where}: the manifest of {entry['name']} is malformed: {exc}") from exc
        if (manifest.module, manifest.target, manifest.artifact, manifest.artifact_sha256) != (
                entry["name"], entry["target"], entry["artifact"], entry["artifact_sha256"]):
            raise ArchiveError("tampered", f"{where}: the manifest of {entry['name']} disagrees with the index")
        if not manifest.module.endswith("_" + manifest.source_key[:10]):
            raise ArchiveError("tampered", f"{where}: {entry['name']} is not named for its source key")
        if manifest.key != cache.full_key(manifest.source_key, manifest.headers,
                                          cache.compiler_facts_of(manifest.toolchain)):
            raise ArchiveError("tampered", f"{where}: the key of {entry['name']} is inconsistent with its manifest")
        if entry["name"] in modules:
            raise ArchiveError("tampered", f"{where}: module {entry['name']} is listed twice")
        modules[entry["name"]] = PackedModule(entry["name"], entry["target"], manifest, manifest_bytes, artifact)
    extra = sorted(set(files) - named)
    if extra:
        raise ArchiveError("tampered", f"{where}: members not named by the index: {', '.join(extra[:3])}")
    return index, modules


# ---------------------------------------------------------------------------------------------------- checks


def check_module(packed: PackedModule, *, roots: Mapping[str, Path], cuda_major: int | None,
                 targets: Sequence[Target] | None, gpu: tuple[int, int] | None, where: str) -> None:
    """The checks against this machine: target, CUDA major, and the headers the module was built from.

    Raises
    ------
    ArchiveError
        reason "target", "toolchain" or "sources".
    """
    name, target_name = packed.name, packed.target
    if target_name != "host":
        if target_name not in SUPPORTED:
            raise ArchiveError("target", f"{where}: {name} is built for {target_name!r}, not a flashinfer_sm12x "
                                         f"target ({', '.join(SUPPORTED)})")
        target = parse_target(target_name, correct_suffix=False)
        if targets is not None and target not in targets:
            wanted = ", ".join(t.name for t in targets)
            raise ArchiveError("target", f"{where}: {name} is built for {target_name}, not for {wanted}")
        if targets is None and gpu is not None and not target.runs_on(gpu):
            raise ArchiveError("target", f"{where}: {name} is built for {target_name}, which cannot run on this "
                                         f"GPU (compute capability {gpu[0]}.{gpu[1]})")
        built_cuda = packed.manifest.toolchain.get("cuda", "")
        if cuda_major is not None and built_cuda.split(".")[0] != str(cuda_major):
            raise ArchiveError("toolchain", f"{where}: {name} was built with CUDA {built_cuda or '?'}; this machine "
                                            f"has CUDA {cuda_major}.x (nvcc, or torch's CUDA where no nvcc): "
                                            "rebuild it here or export it from a machine with the same major")
    why = cache.check_manifest(packed.manifest, roots, check_toolchain_headers=False)
    if why:
        raise ArchiveError("sources", f"{where}: {name} was built from other sources than this installation's "
                                      f"({why}); install the same flashinfer-sm12x, FlashInfer (CUTLASS) and "
                                      "apache-tvm-ffi versions, or rebuild")


# ---------------------------------------------------------------------------------------------------- install


def install_packed(packed: PackedModule, module_dir: Path, *, origin: str, source: str,
                   roots: Mapping[str, Path]) -> str:
    """Install one checked module at `module_dir`; the caller holds its build lock.

    Returns
    -------
    str
        "kept" (a module there already verifies: left as it is) or "installed".
    """
    existing, _ = cache.verify(module_dir, packed.manifest.source_key, roots, None)
    if existing is not None:
        return "kept"
    arch_dir = module_dir.parent
    staging = Path(tempfile.mkdtemp(prefix=f".import-{packed.name}-", dir=arch_dir))  # mode 0700
    try:
        artifact = staging / packed.manifest.artifact
        fd = os.open(artifact, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
        with os.fdopen(fd, "wb") as fh:
            fh.write(packed.artifact_bytes)
            fh.flush()
            os.fsync(fh.fileno())
        manifest = dataclasses.replace(packed.manifest, origin=origin, imported_from=source)
        from .module import discard

        discard(module_dir)  # not verified above: never loaded, so replaced by the verified copy
        cache.ensure_private_dir(module_dir)
        os.replace(artifact, module_dir / manifest.artifact)
        manifest.write(module_dir, staging)  # the commit point: last
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return "installed"


def import_archive(path: Path, root: Path | None = None, *, targets: Sequence[Target] | None = None,
                   expect_sha256: str | None = None, skip_stale: bool = False) -> ImportSummary:
    """Verify every module of the archive at `path`, then install them into the cache.

    Parameters
    ----------
    path
        The archive (`cache export`).
    root
        The cache root (default: the configured cache).
    targets
        Accept only modules of these targets; None: any target that can run on this machine's GPU (any, without
        a GPU).
    expect_sha256
        The archive's sha256 as published; refused when it differs.
    skip_stale
        Install the modules built from this installation's headers and skip (list in `stale`) those built from
        other ones, instead of refusing the archive: an archive made for an earlier checkout still serves the
        modules whose headers did not change. Every other check still refuses the whole archive.

    Returns
    -------
    ImportSummary
        What was installed, what was already there and what was skipped as stale.

    Raises
    ------
    ArchiveError
        Any check failed (with skip_stale, any but "sources"); nothing was written.
    """
    start = time.monotonic()
    index, modules, digest = read_archive(path)
    if expect_sha256 is not None and digest != expect_sha256.lower():
        raise ArchiveError("tampered", f"{path} has sha256 {digest}, not the expected {expect_sha256}")
    roots, cuda_major, gpu = installed_roots(), local_cuda_major(), _gpu_capability()
    summary = ImportSummary(sha256=digest)
    for packed in modules.values():  # every check before the first write
        try:
            check_module(packed, roots=roots, cuda_major=cuda_major, targets=targets, gpu=gpu, where=str(path))
        except ArchiveError as exc:
            if not (skip_stale and exc.reason == "sources"):
                raise
            summary.stale.append(packed.name)
    from .module import module_dir_named

    for packed in modules.values():
        if packed.name in summary.stale:
            continue
        module_dir = module_dir_named(packed.target, packed.name, root)
        with build_lock(module_dir.parent / f"{packed.name}.lock", packed.name):
            outcome = install_packed(packed, module_dir, origin="imported", source=digest, roots=roots)
        (summary.kept if outcome == "kept" else summary.installed).append(packed.name)
    summary.seconds = time.monotonic() - start
    return summary
