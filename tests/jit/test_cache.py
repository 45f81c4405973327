# SPDX-License-Identifier: Apache-2.0
"""JIT cache behaviour (foundation) and hardening: what is checked before native code is loaded."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flashinfer_sm12x.errors import CacheSecurityError, ConfigError
from flashinfer_sm12x.jit import cache, module
from flashinfer_sm12x.jit.selftest import selftest_spec

CHILD = Path(__file__).with_name("_build_child.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every real build in this process."""
    seen: list[str] = []
    real = module.run_ninja

    def counting(ninja, plan, staging):  # type: ignore[no-untyped-def]
        seen.append(plan.module)
        return real(ninja, plan, staging)

    monkeypatch.setattr(module, "run_ninja", counting)
    return seen


def _module_dir(spec: module.ModuleSpec) -> Path:
    return module.module_dir_for(spec)


def _child(value: int = 42, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:  # type: ignore[type-arg]
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.Popen([sys.executable, str(CHILD), str(value)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env, **kwargs)


def test_build_then_warm_load(cache_root: Path, builds: list[str]) -> None:
    spec = selftest_spec(42)
    assert module.load_module(spec).answer() == 42
    module._loaded.clear()
    assert module.load_module(spec).add(1) == 43
    assert builds == [spec.name]  # the second load came from the cache
    manifest = cache.Manifest.read(_module_dir(spec))
    assert manifest.module == spec.name and manifest.headers  # included headers are part of the key
    assert stat_mode(_module_dir(spec)) == 0o700 and stat_mode(cache_root / cache.version_dir_name()) == 0o700


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_module_names_are_readable_and_keyed(cache_root: Path) -> None:
    a, b = selftest_spec(1), selftest_spec(2)
    assert a.name.startswith("jit_selftest_v1_host_") and a.name != b.name
    assert a.base_key() == selftest_spec(1).base_key()


def test_concurrent_processes_build_once(cache_root: Path) -> None:
    procs = [_child(3) for _ in range(4)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert all("ANSWER 3" in o[0] for o in outs)
    built = sum(o[1].count("] built jit_selftest") for o in outs)
    assert built == 1, [o[1] for o in outs]


def test_killed_build_recovers(cache_root: Path, tmp_path: Path, builds: list[str]) -> None:
    slow_cxx = tmp_path / "slow-c++"
    slow_cxx.write_text('#!/bin/sh\ncase "$*" in *--version*) ;; *) sleep 30;; esac\nexec c++ "$@"\n')
    slow_cxx.chmod(0o755)
    proc = _child(2, env={"CXX": str(slow_cxx)})
    spec = selftest_spec(2)
    arch_dir = _module_dir(spec).parent
    deadline = time.monotonic() + 60
    while not list(arch_dir.glob(f".build-{spec.name}-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(arch_dir.glob(f".build-{spec.name}-*")), "the child never started building"
    proc.kill()
    proc.communicate()
    assert module.load_module(spec).answer() == 2
    assert builds == [spec.name]
    assert not list(arch_dir.glob(f".build-{spec.name}-*"))  # the killed build's staging is gone


def _corrupt_and_expect_rebuild(spec: module.ModuleSpec, builds: list[str], why: str) -> None:
    with pytest.warns(UserWarning, match=why):
        artifact = module.build_module(spec)
    assert builds.count(spec.name) == 2
    assert module.verify_spec(spec, artifact.parent)[0] == artifact


def test_truncated_artifact_is_rebuilt(cache_root: Path, builds: list[str]) -> None:
    spec = selftest_spec(42)
    artifact = module.build_module(spec)
    with open(artifact, "r+b") as fh:
        fh.truncate(os.path.getsize(artifact) // 2)
    _corrupt_and_expect_rebuild(spec, builds, "sha256 does not match")


def test_planted_artifact_with_wrong_hash_is_not_loaded(cache_root: Path, builds: list[str]) -> None:
    spec = selftest_spec(42)
    artifact = module.build_module(spec)
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    artifact.write_bytes(bytes(data))
    _corrupt_and_expect_rebuild(spec, builds, "sha256 does not match")


def test_artifact_replaced_by_symlink_is_refused(cache_root: Path, tmp_path: Path, builds: list[str]) -> None:
    spec = selftest_spec(42)
    artifact = module.build_module(spec)
    elsewhere = tmp_path / "evil.so"
    elsewhere.write_bytes(artifact.read_bytes())  # even an identical file is refused behind a link
    artifact.unlink()
    artifact.symlink_to(elsewhere)
    assert "symlink" in module.verify_spec(spec, artifact.parent)[1]
    _corrupt_and_expect_rebuild(spec, builds, "symlink")
    assert not artifact.is_symlink()


def test_manifest_symlink_is_refused(cache_root: Path, tmp_path: Path, builds: list[str]) -> None:
    spec = selftest_spec(42)
    mdir = module.build_module(spec).parent
    moved = tmp_path / "manifest.json"
    (mdir / cache.MANIFEST).rename(moved)
    (mdir / cache.MANIFEST).symlink_to(moved)
    _corrupt_and_expect_rebuild(spec, builds, "symlink")


def test_manifest_key_mismatch_triggers_rebuild(cache_root: Path, builds: list[str]) -> None:
    spec = selftest_spec(42)
    mdir = module.build_module(spec).parent
    path = mdir / cache.MANIFEST
    data = json.loads(path.read_text())
    data["source_key"] = "0" * 64
    path.write_text(json.dumps(data))
    _corrupt_and_expect_rebuild(spec, builds, "key does not match")


def test_header_change_gives_new_key(cache_root: Path, tmp_path: Path, builds: list[str]) -> None:
    inc = tmp_path / "inc"
    inc.mkdir()
    header = inc / "jit_selftest_extra.h"
    header.write_text("#define JIT_SELFTEST_EXTRA_VALUE 100\n")
    spec = selftest_spec(1, extra_include_dirs=[inc])
    assert module.load_module(spec).answer() == 101
    key_before = cache.Manifest.read(_module_dir(spec)).key
    assert "extra0:jit_selftest_extra.h" in cache.Manifest.read(_module_dir(spec)).headers  # logical, not a path
    header.write_text("#define JIT_SELFTEST_EXTRA_VALUE 200\n")
    module._loaded.clear()
    with pytest.warns(UserWarning, match="header extra0:jit_selftest_extra.h changed"):
        assert module.load_module(spec).answer() == 201
    assert cache.Manifest.read(_module_dir(spec)).key != key_before
    assert builds == [spec.name, spec.name]


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_group_or_world_writable_cache_is_refused(cache_root: Path, mode: int) -> None:
    os.chmod(cache_root, mode)
    with pytest.raises(CacheSecurityError, match="chmod 700"):
        module.build_module(selftest_spec(42))


def test_cache_dir_owned_by_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root; the check itself is covered by the mode tests")
    root = tmp_path / "foreign"
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    monkeypatch.setenv("FLASHINFER_SM12X_CACHE_DIR", str(root))
    with pytest.raises(CacheSecurityError, match="owned by uid 65534"):
        module.build_module(selftest_spec(42))


def test_cache_dir_symlink_in_tree_is_refused(cache_root: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (cache_root / cache.version_dir_name()).symlink_to(target)
    with pytest.raises(CacheSecurityError, match="symlink"):
        module.build_module(selftest_spec(42))


def test_new_cache_directories_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLASHINFER_SM12X_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(os, "umask", os.umask)  # restore after
    old = os.umask(0o000)  # even a permissive umask gives 0700
    try:
        module.build_module(selftest_spec(42))
    finally:
        os.umask(old)
    root = tmp_path / "flashinfer_sm12x"
    for path in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        assert stat_mode(path) == 0o700, path


def test_read_only_cache_gives_clear_error(tmp_path: Path) -> None:
    """A read-only cache: a module missing from it is a clear, typed error (never a crash or a fallback)."""
    code = (
        "from flashinfer_sm12x.jit import module; from flashinfer_sm12x.jit.selftest import selftest_spec\n"
        "from flashinfer_sm12x.errors import CacheSecurityError\n"
        "try:\n    module.build_module(selftest_spec(42))\nexcept CacheSecurityError as e:\n"
        "    print('REFUSED', e)\nelse:\n    print('BUILT')\n"
    )
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    env = dict(os.environ, PYTHONPATH=str(REPO), FLASHINFER_SM12X_CACHE_DIR=str(root))
    if os.geteuid() != 0:
        os.chmod(root, 0o500)
        cmd = [sys.executable, "-c", code]
    else:
        # root ignores permission bits: mount a read-only tmpfs over the cache in a private mount namespace.
        unshare = shutil.which("unshare")
        if unshare is None or subprocess.run([unshare, "-rm", "true"], capture_output=True).returncode != 0:
            pytest.skip("running as root without unshare: cannot make a read-only cache here")
        mount = f"mount -t tmpfs -o ro,mode=0700,size=1m tmpfs {shlex.quote(str(root))}"
        script = f"{mount} && exec {shlex.quote(sys.executable)} -c {shlex.quote(code)}"
        cmd = [unshare, "-rm", "sh", "-c", script]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert "REFUSED" in out.stdout, out.stdout + out.stderr
    assert "FLASHINFER_SM12X_CACHE_DIR" in out.stdout


@pytest.mark.parametrize("value", ["relative/cache", "/does/not/exist/anywhere"])
def test_bad_cache_dir_env_is_an_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FLASHINFER_SM12X_CACHE_DIR", value)
    with pytest.raises(ConfigError, match="FLASHINFER_SM12X_CACHE_DIR"):
        cache.default_root()


def test_list_and_clear(cache_root: Path) -> None:
    a, b = selftest_spec(1), selftest_spec(2)
    module.build_module(a)
    module.build_module(b)
    names = {e.module for e in cache.list_entries()}
    assert {a.name, b.name} <= names
    assert all(e.size_bytes > 0 and e.valid_manifest for e in cache.list_entries())
    removed = cache.clear(module=a.name)
    assert [p.name for p in removed] == [a.name]
    assert {e.module for e in cache.list_entries()} == {b.name}
    assert cache.clear(arch="host") and cache.list_entries() == []
    with pytest.raises(ConfigError):
        cache.clear()
