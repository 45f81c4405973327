# SPDX-License-Identifier: Apache-2.0
"""Relocatable cache keys, `cache export` / `cache import` and kernel bundles.

The module carried around is the MMA probe for sm_120a (no CUTLASS: a few seconds of nvcc), built once per test
module; the refusal cases rewrite its archive.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from flashinfer_sm12x.cli import main
from flashinfer_sm12x.errors import ArchiveError, ConfigError
from flashinfer_sm12x.jit import archive, bundles, cache, module
from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.jit.selftest import selftest_spec
from flashinfer_sm12x.ops.mma_probe import mma_probe_spec

REPO = Path(__file__).resolve().parents[2]
TARGET = "sm_120a"


def _probe() -> module.ModuleSpec:
    return mma_probe_spec(parse_target(TARGET), 1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probe built in its own cache (root A) and exported through the CLI."""
    work = tmp_path_factory.mktemp("export")
    root_a = work / "cache-a"
    root_a.mkdir(mode=0o700)
    out = work / "probe.tar.gz"
    saved = os.environ.get("FLASHINFER_SM12X_CACHE_DIR")
    os.environ["FLASHINFER_SM12X_CACHE_DIR"] = str(root_a)
    try:
        assert main(["cache", "export", "--ops", "mma_probe", "--arch", TARGET, "--limit", "1", "-o", str(out)]) == 0
    finally:
        if saved is None:
            os.environ.pop("FLASHINFER_SM12X_CACHE_DIR")
        else:
            os.environ["FLASHINFER_SM12X_CACHE_DIR"] = saved
    return out


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under the cache root with its content hash (directories as 'dir')."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def _members(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(path, "r:*") as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]


def _write(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_key_has_no_install_path() -> None:
    spec = _probe()
    facts = json.dumps([spec.cuda_flags(portable=True), spec.ldflags(portable=True), spec.portable_facts()])
    for path in (REPO, Path(sys.prefix), Path("/usr/local/cuda")):
        assert str(path) not in facts
    assert "-I{pkg/include}" in spec.cuda_flags(portable=True)
    assert "-lcudart_static" in spec.ldflags() and not any("rpath" in f for f in spec.ldflags())


def test_shared_cudart_links_by_soname_and_names_other_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    static_name = _probe().name
    monkeypatch.setenv("FLASHINFER_SM12X_CUDART", "shared")
    shared = _probe()
    assert "-lcudart" in shared.ldflags() and "-lcudart_static" not in shared.ldflags()
    assert not any("rpath" in f for f in shared.ldflags())
    assert shared.name != static_name  # a cache never mixes the two builds
    monkeypatch.setenv("FLASHINFER_SM12X_CUDART", "dynamic")
    with pytest.raises(ConfigError, match="'static' or 'shared'"):
        _probe().ldflags()


def test_header_labels_are_relative_to_their_roots(tmp_path: Path) -> None:
    roots = [("pkg/include", tmp_path / "inc"), ("cutlass/include", tmp_path / "inc" / "cutlass")]
    assert cache.logical_header(tmp_path / "inc" / "a" / "b.h", roots, None) == "pkg/include:a/b.h"
    assert cache.logical_header(tmp_path / "inc" / "cutlass" / "c.h", roots, None) == "cutlass/include:c.h"
    assert cache.logical_header(Path("/usr/include/stdio.h"), roots, None) == "sys:/usr/include/stdio.h"
    assert cache.resolve_header("pkg/include:../../etc/passwd", {"pkg/include": tmp_path}, {}) is None


@pytest.mark.compile_proof
def test_exported_module_loads_elsewhere_without_a_compiler(exported: Path, tmp_path: Path) -> None:
    """Another install path (a copy of the package's sources), another cache root, nvcc out of reach: the import
    verifies and the loader finds the module with zero compiles."""
    relocated = tmp_path / "elsewhere"
    for part in ("flashinfer_sm12x", "include", "csrc", "jit"):
        shutil.copytree(REPO / part, relocated / part, ignore=shutil.ignore_patterns("__pycache__"))
    root_b = tmp_path / "cache-b"
    root_b.mkdir(mode=0o700)
    calls = tmp_path / "nvcc-calls"
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')  # answers no version: "no usable nvcc"
    fake.chmod(0o755)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if p and not os.path.exists(os.path.join(p, "nvcc")))
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    env.update(PATH=f"{fake.parent}{os.pathsep}{path}", PYTHONPATH=str(relocated), FLASHINFER_SM12X_NVCC=str(fake),
               FLASHINFER_SM12X_CACHE_DIR=str(root_b), FLASHINFER_SM12X_QUIET="1")
    out = subprocess.run([sys.executable, "-m", "flashinfer_sm12x", "cache", "import", str(exported)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 imported" in out.stdout
    code = f"""
import flashinfer_sm12x, tvm_ffi
from flashinfer_sm12x.jit import cache, module
from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.ops.mma_probe import mma_probe_spec
assert flashinfer_sm12x.__file__.startswith({str(relocated)!r}), flashinfer_sm12x.__file__
spec = mma_probe_spec(parse_target({TARGET!r}), 1)
artifact = module.build_module(spec)
assert str(artifact).startswith({str(root_b)!r}), artifact
assert cache.Manifest.read(artifact.parent).origin == "imported"
tvm_ffi.load_module(str(artifact))
print("LOADED", artifact.name)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert "LOADED mma_probe_mxfp4_k64_sm_120a_" in out.stdout, out.stdout + out.stderr
    called = calls.read_text().splitlines() if calls.exists() else []
    assert all(line == "--version" for line in called), called  # asked its version at most: never compiled


@pytest.mark.compile_proof
def test_import_twice_keeps_the_verified_module(exported: Path, cache_root: Path) -> None:
    first = archive.import_archive(exported)
    again = archive.import_archive(exported)
    assert len(first.installed) == 1 and again.kept == first.installed and not again.installed


def _refused(path: Path, reason: str, cache_root: Path, **kwargs: object) -> ArchiveError:
    before = _snapshot(cache_root)
    with pytest.raises(ArchiveError) as info:
        archive.import_archive(path, **kwargs)  # type: ignore[arg-type]
    assert info.value.reason == reason, str(info.value)
    assert _snapshot(cache_root) == before  # nothing written, nothing removed
    return info.value


@pytest.mark.compile_proof
def test_tampered_artifact_is_refused(exported: Path, cache_root: Path, tmp_path: Path) -> None:
    members = _members(exported)
    for info, data in members:
        if info.name.endswith(".so"):
            members[members.index((info, data))] = (info, data[:-1] + bytes([data[-1] ^ 1]))  # type: ignore[index]
    _refused(_write(tmp_path / "bad.tar", members), "tampered", cache_root)


@pytest.mark.compile_proof
def test_tampered_manifest_is_refused_even_with_a_fixed_index(exported: Path, cache_root: Path,
                                                              tmp_path: Path) -> None:
    """A header digest changed and the index's manifest hash updated to match: the key no longer adds up."""
    members = _members(exported)
    index_i = next(i for i, (m, _) in enumerate(members) if m.name == archive.INDEX_NAME)
    man_i = next(i for i, (m, _) in enumerate(members) if m.name.endswith(cache.MANIFEST))
    manifest = json.loads(members[man_i][1])  # type: ignore[arg-type]
    first = sorted(manifest["headers"])[0]
    manifest["headers"][first] = "0" * 64
    raw = json.dumps(manifest).encode()
    index = json.loads(members[index_i][1])  # type: ignore[arg-type]
    index["modules"][0]["manifest_sha256"] = hashlib.sha256(raw).hexdigest()
    members[man_i] = (members[man_i][0], raw)
    members[index_i] = (members[index_i][0], json.dumps(index).encode())
    error = _refused(_write(tmp_path / "bad.tar", members), "tampered", cache_root)
    assert "inconsistent" in str(error)


@pytest.mark.compile_proof
def test_pinned_sha256_is_checked(exported: Path, cache_root: Path) -> None:
    _refused(exported, "tampered", cache_root, expect_sha256="0" * 64)


@pytest.mark.compile_proof
def test_wrong_target_is_refused(exported: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _refused(exported, "target", cache_root, targets=[parse_target("sm_121a")])
    monkeypatch.setattr(archive, "_gpu_capability", lambda: (12, 1))  # a DGX Spark cannot run sm_120a code
    _refused(exported, "target", cache_root)


@pytest.mark.compile_proof
def test_other_cuda_major_is_refused(exported: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "local_cuda_major", lambda: 12)
    error = _refused(exported, "toolchain", cache_root)
    assert "CUDA 13" in str(error) and "12" in str(error)


@pytest.mark.compile_proof
def test_other_sources_are_refused(exported: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path) -> None:
    """The package's headers differ here (another release): the binary was not built from them."""
    fake_include = tmp_path / "include"
    shutil.copytree(REPO / "include", fake_include)
    probe_header = next(fake_include.rglob("mma_probe.cuh"))
    probe_header.write_text(probe_header.read_text() + "\n// changed\n")
    real = archive.installed_roots
    monkeypatch.setattr(archive, "installed_roots", lambda: {**real(), "pkg/include": fake_include})
    error = _refused(exported, "sources", cache_root)
    assert "mma_probe.cuh" in str(error)
    # skip_stale: the stale module is skipped and named, nothing is written; the CLI says so and succeeds.
    before = _snapshot(cache_root)
    summary = archive.import_archive(exported, skip_stale=True)
    assert summary.stale == [_probe().name] and not summary.installed and not summary.kept
    assert _snapshot(cache_root) == before
    assert main(["cache", "import", str(exported), "--skip-stale"]) == 0
    assert _snapshot(cache_root) == before


@pytest.mark.compile_proof
def test_skip_stale_still_refuses_a_tampered_archive(exported: Path, cache_root: Path, tmp_path: Path) -> None:
    members = _members(exported)
    for i, (info, data) in enumerate(members):
        if info.name.endswith(".so"):
            members[i] = (info, data[:-1] + bytes([data[-1] ^ 1]))  # type: ignore[index]
    _refused(_write(tmp_path / "bad.tar", members), "tampered", cache_root, skip_stale=True)


def _index_only(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    index = {"format": archive.ARCHIVE_FORMAT, "package": cache.version_dir_name(), "modules": []}
    return [(tarfile.TarInfo(archive.INDEX_NAME), json.dumps(index).encode()), *members]


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "absolute", "dotdot", "device"])
def test_unsafe_members_are_refused(kind: str, cache_root: Path, tmp_path: Path) -> None:
    info = tarfile.TarInfo({"absolute": "/etc/evil.so", "dotdot": "modules/../../evil.so"}.get(
        kind, "modules/sm_120a/x_0123456789/evil.so"))
    data: bytes | None = b"\x7fELF"
    if kind == "symlink":
        info.type, info.linkname, data = tarfile.SYMTYPE, "/etc/passwd", None
    elif kind == "hardlink":
        info.type, info.linkname, data = tarfile.LNKTYPE, archive.INDEX_NAME, None
    elif kind == "device":
        info.type, data = tarfile.CHRTYPE, None
    error = _refused(_write(tmp_path / f"{kind}.tar", _index_only([(info, data)])), "unsafe_member", cache_root)
    assert info.name in str(error)


def test_not_an_archive_is_refused(cache_root: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar file at all")
    _refused(junk, "format", cache_root)
    _refused(_write(tmp_path / "noindex.tar", []), "format", cache_root)


def test_host_module_round_trip_and_unknown_root(cache_root: Path, tmp_path: Path) -> None:
    """No nvcc needed: the host-only self-test module exports and re-imports; its variant with an extra include
    directory (a root other installations do not have) is refused as built from other sources."""
    plain = module.build_module(selftest_spec(3)).parent
    out = archive.export_archive([plain], tmp_path / "host.tar")
    assert out.modules == [plain.name] and out.sha256 == cache.sha256_file(tmp_path / "host.tar")
    other = tmp_path / "other-cache"
    other.mkdir(mode=0o700)
    summary = archive.import_archive(tmp_path / "host.tar", other)
    assert summary.installed == [plain.name]
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "jit_selftest_extra.h").write_text("#define JIT_SELFTEST_EXTRA_VALUE 5\n")
    extra = module.build_module(selftest_spec(1, extra_include_dirs=[inc])).parent
    archive.export_archive([extra], tmp_path / "extra.tar")
    _refused(tmp_path / "extra.tar", "sources", cache_root)


# ---------------------------------------------------------------------------------------------------- bundles


@pytest.fixture
def no_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> float:
        raise AssertionError("a module was compiled although a bundle holds it")

    monkeypatch.setattr(module, "run_ninja", refuse)


def _unpack(archive_path: Path, dest: Path) -> Path:
    with tarfile.open(archive_path, "r:*") as tar:
        tar.extractall(dest, filter="data")
    return dest


@pytest.mark.compile_proof
def test_bundle_on_the_search_path_is_used_without_compiling(exported: Path, cache_root: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             no_compiles: None) -> None:
    bundle = _unpack(exported, tmp_path / "bundle")
    monkeypatch.setenv(bundles.BUNDLE_PATH, str(bundle))
    bundles.clear_bundle_cache()
    try:
        artifact = module.build_module(_probe())
    finally:
        bundles.clear_bundle_cache()
    manifest = cache.Manifest.read(artifact.parent)
    assert manifest.origin == "bundle" and manifest.imported_from == str(bundle)
    assert str(artifact).startswith(str(cache_root))  # copied into the private cache, loaded from there


@pytest.mark.compile_proof
def test_prebuild_reports_bundled_modules_apart_from_built_ones(exported: Path, cache_root: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, no_compiles: None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A module copied from a kernel bundle is neither "built" nor announced as building: prebuild counts it apart,
    so "0 built" means that nothing compiled."""
    from flashinfer_sm12x.jit import prebuild

    bundle = _unpack(exported, tmp_path / "bundle")
    monkeypatch.setenv(bundles.BUNDLE_PATH, str(bundle))
    bundles.clear_bundle_cache()
    try:
        items = [prebuild.PlanItem("mma_probe", _probe())]
        summary = prebuild.run_plan(items, prebuild.JobBudget(1, None, "test"), root=cache_root)
    finally:
        bundles.clear_bundle_cache()
    assert summary.bundled == [_probe().name] and not summary.built and not summary.cached
    assert "0 built, 0 cached, 1 from kernel bundles, 0 failed" in summary.render()
    assert "building" not in capsys.readouterr().out


@pytest.mark.compile_proof
def test_tampered_bundle_is_skipped_and_the_module_built(exported: Path, cache_root: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _unpack(exported, tmp_path / "bundle")
    so = next(bundle.rglob("*.so"))
    so.write_bytes(so.read_bytes()[:-16])
    monkeypatch.setenv(bundles.BUNDLE_PATH, str(bundle))
    bundles.clear_bundle_cache()
    try:
        with pytest.warns(UserWarning, match="not a kernel bundle|does not match"):
            artifact = module.build_module(_probe())
    finally:
        bundles.clear_bundle_cache()
    assert cache.Manifest.read(artifact.parent).origin == "built"


@pytest.mark.compile_proof
def test_bundle_wheel_installs_and_is_found(exported: Path, cache_root: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/build_bundle.py --from-archive: a wheel whose entry point names its module tree; installed with
    pip (no index), the loader finds the module in a fresh process with zero compiles."""
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "build_bundle.py"), "--from-archive", str(exported),
                          "--name", "sm120a-test", "-o", str(tmp_path / "dist")],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    wheel = next((tmp_path / "dist").glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".so") for n in names) and any(n.endswith("entry_points.txt") for n in names)
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                          str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    code = f"""
from flashinfer_sm12x.jit import cache, module
from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.ops.mma_probe import mma_probe_spec
def refuse(*a, **k):
    raise SystemExit("COMPILED")
module.run_ninja = refuse
artifact = module.build_module(mma_probe_spec(parse_target({TARGET!r}), 1))
print("ORIGIN", cache.Manifest.read(artifact.parent).origin)
"""
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{target}", FLASHINFER_SM12X_QUIET="1")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "ORIGIN bundle" in run.stdout, run.stdout + run.stderr
    doctor = subprocess.run([sys.executable, "-m", "flashinfer_sm12x", "doctor", "--no-selftest"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert "sm120a-test" in doctor.stdout and f"{TARGET}: 1 prebuilt" in doctor.stdout, doctor.stdout
    assert f"{TARGET}" in doctor.stdout and "1 bundle" in doctor.stdout
