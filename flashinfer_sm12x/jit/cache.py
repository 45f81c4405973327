# SPDX-License-Identifier: Apache-2.0
"""The JIT cache: private directories, manifests, verification before anything is loaded.

Layout: <root>/<package version>/<target>/<module name>/{<module>.<key>.so, manifest.json, last_used}
  root = $FLASHINFER_SM12X_CACHE_DIR, else $XDG_CACHE_HOME/flashinfer_sm12x, else ~/.cache/flashinfer_sm12x.

What is checked before native code is loaded (cache hardening):
  * every cache directory is a real directory (not a symlink), owned by this user, not group/world-writable;
    new ones are created 0700. Anything else is refused with CacheSecurityError naming the directory.
  * manifest.json and the artifact are regular files (lstat: no symlinks), owned by this user, not writable
    by others; the manifest's key equals the key being asked for, every header it lists still hashes the same,
    and the artifact's sha256 equals the manifest's. Any mismatch: warn, discard, rebuild; never load.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import env
from .._version import __version__
from ..errors import CacheSecurityError, ConfigError

MANIFEST = "manifest.json"
LAST_USED = "last_used"
MANIFEST_FORMAT = 1


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


def check_private_file(path: Path) -> os.stat_result:
    st = os.lstat(path)  # FileNotFoundError propagates: "not built"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise CacheSecurityError(f"{path} is a symlink or not a regular file; it will not be loaded.")
    if st.st_uid != os.getuid():
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


def full_key(base_key: str, headers: dict[str, str]) -> str:
    return sha256_text(json.dumps({"base": base_key, "headers": sorted(headers.items())}))


@dataclass
class Manifest:
    module: str
    op: str
    target: str
    base_key: str  # everything known before the build: sources, flags, toolchain, versions
    key: str  # base_key + the content of every header the build included
    artifact: str
    artifact_sha256: str
    headers: dict[str, str] = field(default_factory=dict)  # absolute path -> sha256
    toolchain: dict[str, str] = field(default_factory=dict)
    built_at: str = ""
    build_seconds: float = 0.0
    format: int = MANIFEST_FORMAT

    def write(self, module_dir: Path, staging_dir: Path) -> None:
        tmp = staging_dir / MANIFEST
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, module_dir / MANIFEST)

    @staticmethod
    def read(module_dir: Path) -> Manifest:
        path = module_dir / MANIFEST
        check_private_file(path)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as fh:
            data = json.load(fh)
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"manifest format {data.get('format')} is not {MANIFEST_FORMAT}")
        return Manifest(**data)


def verify(module_dir: Path, base_key: str) -> tuple[Path | None, str]:
    """(artifact path, "") when the module at module_dir may be loaded, else (None, why not)."""
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
    if manifest.base_key != base_key:
        return None, "manifest key does not match the requested module (sources, flags or toolchain changed)"
    for header, digest in manifest.headers.items():
        try:
            now = sha256_file(Path(header))
        except OSError:
            return None, f"included header {header} is gone"
        if now != digest:
            return None, f"included header {header} changed"
    if manifest.key != full_key(base_key, manifest.headers):
        return None, "manifest key is inconsistent with its header digests"
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
                    built, valid = manifest.built_at, True
                except (OSError, ValueError, TypeError, CacheSecurityError):
                    built, valid = "?", False
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
    for entry in list_entries(root):
        if (module is not None and (entry.module == module or entry.module.startswith(module + "_"))) or (
            arch is not None and entry.target == arch
        ):
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
