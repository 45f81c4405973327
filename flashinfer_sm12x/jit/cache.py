# SPDX-License-Identifier: Apache-2.0
"""The JIT cache: private directories, manifests, verification before anything is loaded.

Layout: <root>/<package version>/<target>/<module name>/{<module>.<key>.so, manifest.json, last_used}
  root = $FLASHINFER_SM12X_CACHE_DIR, else $XDG_CACHE_HOME/flashinfer_sm12x, else ~/.cache/flashinfer_sm12x.

What is checked before native code is loaded (cache hardening):
  * every cache directory is a real directory (not a symlink), owned by this user, not group/world-writable;
    new ones are created 0700. Anything else is refused with CacheSecurityError naming the directory.
  * manifest.json and the artifact are regular files (lstat: no symlinks), owned by this user, not writable
    by others; the manifest's source key equals the key being asked for, every header it lists still hashes the
    same, and the artifact's sha256 equals the manifest's. Any mismatch: warn, discard, rebuild; never load.

Relocatable keys: nothing in a key names where things are installed. Include directories are logical roots
(`pkg/include`, `pkg/csrc`, `cutlass/include`, `cutlass/util`, `tvm_ffi/include`, `extraN`), and a header is
recorded as `root:relative/path` with its sha256, so a module built in one venv (or cache, or machine) verifies in
another whose headers have the same contents. Headers of the compilers themselves (`cuda:` the toolkit, `sys:` the
host's) are recorded too; they belong to the compiler, whose version is in the manifest:
  * the source key (module directory name, lookup): op, group, target, sources, flags with logical include dirs,
    package / CUTLASS / tvm_ffi versions: computable without any compiler;
  * the full key: the source key + the compilers' versions + every included header's sha256.
A module built here is rebuilt when the local compiler's version differs from the manifest's or one of its
headers changed; an imported or bundled module was checked against this machine's CUDA major at import, and its
compiler's headers are not re-read (the compiler need not be installed to load it).
  * artifacts and manifests are installed by atomic rename from a private temporary directory beside them,
    artifact first, manifest last, so a half-written file is never named by a valid manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import env
from .._version import __version__
from ..errors import CacheSecurityError, ConfigError

MANIFEST = "manifest.json"
LAST_USED = "last_used"
MANIFEST_FORMAT = 2
# Where a module came from: built here, imported from an archive (`cache import`), or copied from a kernel bundle.
ORIGINS = ("built", "imported", "bundle")
TOOLCHAIN_LABELS = ("cuda", "sys")  # header roots that belong to the compilers, not to the sources


def default_root() -> Path:
    override = env.path_from_env(env.CACHE_DIR, kind="dir")
    if override is not None:
        return override
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return Path(os.path.realpath(base)) / "flashinfer_sm12x"


def ensure_private_dir(path: Path, *, create: bool = True) -> Path:
    """Create `path` 0700 if missing; refuse it unless it is a real directory private to this user."""
    if create and not os.path.lexists(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # another process won the race; checked below like any existing directory
        except OSError as exc:  # EACCES, EROFS (read-only cache), ENOSPC...
            raise CacheSecurityError(
                f"cannot create the JIT cache directory {path}: {exc.strerror}. "
                f"Set {env.CACHE_DIR} to a writable private directory (mode 0700)."
            ) from exc
    check_private_dir(path)
    return path


def check_private_dir(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise CacheSecurityError(f"JIT cache directory {path} does not exist.") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise CacheSecurityError(
            f"JIT cache path {path} is a symlink or not a directory; remove it (flashinfer_sm12x only "
            "uses real directories it owns)."
        )
    if st.st_uid != os.getuid():
        raise CacheSecurityError(
            f"JIT cache directory {path} is owned by uid {st.st_uid}, not by you (uid {os.getuid()}): another "
            f"user could plant native code there. Set {env.CACHE_DIR} to a directory of your own (mode 0700)."
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheSecurityError(
            f"JIT cache directory {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}): "
            f"another user could plant native code there. Fix: chmod 700 {path}"
        )


def check_private_file(path: Path, *, trusted_owners: tuple[int, ...] | None = None) -> os.stat_result:
    """Refuse `path` unless it is a regular file (not a symlink) of this user (or of `trusted_owners`), not
    writable by group or others."""
    st = os.lstat(path)  # FileNotFoundError propagates: "not built"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise CacheSecurityError(f"{path} is a symlink or not a regular file; it will not be loaded.")
    if st.st_uid not in (trusted_owners or (os.getuid(),)):
        raise CacheSecurityError(f"{path} is owned by uid {st.st_uid}, not by you; it will not be loaded.")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheSecurityError(f"{path} is writable by group or others; it will not be loaded.")
    return st


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def full_key(source_key: str, headers: dict[str, str], compilers: dict[str, str] | None = None) -> str:
    """The key of one binary: its source key, the compilers' versions and every included header's sha256."""
    return sha256_text(json.dumps({"source": source_key, "compilers": sorted((compilers or {}).items()),
                                   "headers": sorted(headers.items())}))


def logical_header(path: Path, roots: Sequence[tuple[str, Path]], cuda_home: Path | None) -> str:
    """`label:relative/path` for a header under one of `roots` (the longest match), `cuda:...` under the toolkit,
    else `sys:/absolute/path` (the host compiler's and the C library's headers)."""
    best: tuple[int, str] | None = None
    for label, root in roots:
        if root in path.parents and (best is None or len(str(root)) > best[0]):
            best = (len(str(root)), f"{label}:{path.relative_to(root).as_posix()}")
    if best is not None:
        return best[1]
    if cuda_home is not None and cuda_home in path.parents:
        return f"cuda:{path.relative_to(cuda_home).as_posix()}"
    return f"sys:{path}"


def resolve_header(name: str, roots: Mapping[str, Path], build_paths: Mapping[str, str]) -> Path | None:
    """Where a logical header is on this machine; None for an unknown root. `cuda:` resolves against the toolkit
    the module was built with (recorded in its manifest), `sys:` is already absolute."""
    label, sep, rest = name.partition(":")
    if not sep or not rest:
        return None
    if label == "sys":
        return Path(rest) if os.path.isabs(rest) else None
    base = roots.get(label) if label != "cuda" else (Path(build_paths["cuda"]) if "cuda" in build_paths else None)
    if base is None:
        return None
    if os.path.isabs(rest) or ".." in Path(rest).parts:
        return None  # a crafted manifest must not point outside its root
    return base / rest


def compiler_facts_of(toolchain: Mapping[str, str]) -> dict[str, str]:
    """The compilers' entries of a manifest's toolchain facts (what a rebuild here would change)."""
    return {k: v for k, v in toolchain.items() if k in ("nvcc", "cxx")}


@dataclass
class Manifest:
    module: str
    op: str
    target: str
    source_key: str  # everything known before the build, with no install path: sources, flags, versions
    key: str  # source_key + the compilers' versions + the content of every header the build included
    artifact: str
    artifact_sha256: str
    headers: dict[str, str] = field(default_factory=dict)  # logical header (root:relative path) -> sha256
    toolchain: dict[str, str] = field(default_factory=dict)
    built_at: str = ""
    build_seconds: float = 0.0
    origin: str = "built"  # one of ORIGINS
    build_paths: dict[str, str] = field(default_factory=dict)  # informational: the build machine's roots
    imported_from: str = ""  # the archive's sha256 (imported) or the bundle's name (bundle)
    format: int = MANIFEST_FORMAT

    def write(self, module_dir: Path, staging_dir: Path) -> None:
        tmp = staging_dir / MANIFEST
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.to_bytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, module_dir / MANIFEST)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> Manifest:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            got = data.get("format") if isinstance(data, dict) else None
            raise ValueError(f"manifest format {got} is not {MANIFEST_FORMAT}")
        manifest = Manifest(**data)
        if manifest.origin not in ORIGINS:
            raise ValueError(f"manifest origin {manifest.origin!r} is not one of {', '.join(ORIGINS)}")
        return manifest

    @staticmethod
    def read(module_dir: Path, *, trusted_owners: tuple[int, ...] | None = None) -> Manifest:
        path = module_dir / MANIFEST
        check_private_file(path, trusted_owners=trusted_owners)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            return Manifest.from_bytes(fh.read())


def check_manifest(manifest: Manifest, roots: Mapping[str, Path], *, check_toolchain_headers: bool) -> str:
    """"" when every header the manifest lists hashes the same here and its key is consistent, else why not.

    Headers under a content root (`roots`) are re-hashed wherever that root is installed here; the compilers'
    own headers (`cuda:`, `sys:`) only when `check_toolchain_headers` (a module built on this machine)."""
    for header, digest in manifest.headers.items():
        label = header.partition(":")[0]
        if label in TOOLCHAIN_LABELS and not check_toolchain_headers:
            continue
        path = resolve_header(header, roots, manifest.build_paths)
        if path is None:
            return f"included header {header} is under a root unknown here"
        try:
            now = sha256_file(path)
        except OSError:
            return f"included header {header} is gone"
        if now != digest:
            return f"included header {header} changed"
    if manifest.key != full_key(manifest.source_key, manifest.headers, compiler_facts_of(manifest.toolchain)):
        return "manifest key is inconsistent with its header digests and compilers"
    return ""


def verify(module_dir: Path, source_key: str, roots: Mapping[str, Path] | None = None,
           compilers: Mapping[str, str] | None = None) -> tuple[Path | None, str]:
    """(artifact path, "") when the module at module_dir may be loaded, else (None, why not).

    Parameters
    ----------
    module_dir
        The module's directory in a private cache.
    source_key
        The key being asked for (ModuleSpec.source_key()).
    roots
        Logical include root -> where it is installed here (ModuleSpec.header_roots()).
    compilers
        The local compilers' versions (ModuleSpec.local_compilers()), or None where no compiler is installed:
        a module built here with another compiler is then out of date.

    Returns
    -------
    tuple
        The artifact to load, or None and the reason.
    """
    try:
        check_private_dir(module_dir)
    except CacheSecurityError as exc:
        if not os.path.lexists(module_dir):
            return None, "not built"
        return None, str(exc)
    try:
        manifest = Manifest.read(module_dir)
    except FileNotFoundError:
        return None, "no manifest (an earlier build did not finish)"
    except (CacheSecurityError, ValueError, TypeError, json.JSONDecodeError) as exc:
        return None, f"manifest rejected: {exc}"
    if manifest.source_key != source_key:
        return None, "manifest key does not match the requested module (sources, flags or versions changed)"
    built_here = manifest.origin == "built"
    if built_here and compilers is not None:
        theirs = compiler_facts_of(manifest.toolchain)
        changed = [k for k, v in compilers.items() if k in theirs and theirs[k] != v]
        if changed:
            return None, f"built with another compiler ({', '.join(changed)}: {theirs[changed[0]]!r})"
    why = check_manifest(manifest, roots or {}, check_toolchain_headers=built_here)
    if why:
        return None, why
    artifact = module_dir / manifest.artifact
    if os.path.basename(manifest.artifact) != manifest.artifact:
        return None, "manifest names an artifact outside its directory"
    try:
        check_private_file(artifact)
    except FileNotFoundError:
        return None, "artifact missing"
    except CacheSecurityError as exc:
        return None, str(exc)
    if sha256_file(artifact) != manifest.artifact_sha256:
        return None, "artifact sha256 does not match its manifest (truncated, corrupt or replaced)"
    return artifact, ""


def touch_last_used(module_dir: Path) -> None:
    try:
        fd = os.open(module_dir / LAST_USED, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        os.utime(module_dir / LAST_USED)
    except OSError:
        pass  # a read-only cache still loads; last-used is only informational


@dataclass
class CacheEntry:
    module: str
    target: str
    version: str
    path: Path
    size_bytes: int
    built_at: str
    last_used: float | None
    valid_manifest: bool
    origin: str = "?"


def list_entries(root: Path | None = None) -> list[CacheEntry]:
    root = root or default_root()
    entries: list[CacheEntry] = []
    if not os.path.lexists(root):
        return entries
    check_private_dir(root)  # a cache others can write to is refused here too, as every other command does
    for version_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        for arch_dir in sorted(p for p in version_dir.iterdir() if p.is_dir() and not p.is_symlink()):
            for module_dir in sorted(p for p in arch_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                size = sum(f.stat().st_size for f in module_dir.iterdir() if f.is_file() and not f.is_symlink())
                try:
                    manifest = Manifest.read(module_dir)
                    built, valid, origin = manifest.built_at, True, manifest.origin
                except (OSError, ValueError, TypeError, CacheSecurityError):
                    built, valid, origin = "?", False, "?"
                last = module_dir / LAST_USED
                entries.append(
                    CacheEntry(
                        module=module_dir.name,
                        target=arch_dir.name,
                        version=version_dir.name,
                        path=module_dir,
                        size_bytes=size,
                        built_at=built,
                        last_used=last.stat().st_mtime if last.exists() else None,
                        valid_manifest=valid,
                        origin=origin,
                    )
                )
    return entries


def clear(*, module: str | None = None, arch: str | None = None, everything: bool = False,
          root: Path | None = None) -> list[Path]:
    """Remove cached modules; returns what was removed. Exactly one selector must be given."""
    if sum(x is not None and x is not False for x in (module, arch, everything)) != 1:
        raise ConfigError("cache clear needs exactly one of --module NAME, --arch ARCH or --all")
    root = root or default_root()
    removed: list[Path] = []
    if everything:
        if root.is_dir():
            check_private_dir(root)
            for child in root.iterdir():
                _remove(child)
                removed.append(child)
        return removed
    entries = list_entries(root)
    chosen = [e for e in entries if (module is not None and (e.module == module or e.module.startswith(module + "_")))
              or (arch is not None and e.target == arch)]
    if not chosen:
        # A typo must not look like success: say what is there instead.
        if module is not None:
            known = sorted({e.module for e in entries})
            raise ConfigError(f"no cached module named {module!r} (nor starting with {module + '_'!r}) in {root}; "
                              f"cached: {', '.join(known) if known else 'none'} (see `flashinfer-sm12x cache list`)")
        targets = sorted({e.target for e in entries})
        raise ConfigError(f"no cached module for target {arch!r} in {root}; cached targets: "
                          f"{', '.join(targets) if targets else 'none'}")
    for entry in chosen:
        _remove(entry.path)
        removed.append(entry.path)
    return removed


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def version_dir_name() -> str:
    return __version__


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
