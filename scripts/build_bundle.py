#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Build a kernel bundle wheel: prebuilt modules that `fused_moe` / `mm_fp4` find with zero compiles.

The wheel `flashinfer-sm12x-kernels-<name>` holds one unpacked kernel archive (flashinfer_sm12x/jit/archive.py)
and registers it under the entry point group `flashinfer_sm12x.kernel_bundles`; the loader copies a module from it
into the private cache after checking it like `cache import` does.

    # the GPT-OSS presets for RTX 5090 / RTX PRO 6000 (x86-64, sm_120a), both activation modes:
    python scripts/build_bundle.py --arch sm_120a --model gpt-oss-120b,gpt-oss-20b --act mxfp8,mxfp4 \\
        --name sm120a -o dist/
    pip install dist/flashinfer_sm12x_kernels_sm120a-*.whl

    # from archives made by `flashinfer-sm12x cache export` (several may be merged):
    python scripts/build_bundle.py --from-archive a.tar.gz --from-archive b.tar.gz --name sm120a -o dist/

On a DGX Spark (aarch64, sm_121a) run the same on the Spark itself: `--arch sm_121a --name sm121a`.
Builds use `flashinfer-sm12x cache export` (MAX_JOBS / --jobs as for prebuild).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import platform
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flashinfer_sm12x._version import __version__  # noqa: E402
from flashinfer_sm12x.jit import archive  # noqa: E402

WHEEL_LIMIT_BYTES = 100 * 2**20  # the package index's per-file limit


def _export(args: argparse.Namespace, work: Path) -> list[Path]:
    archives = []
    for model in args.model.split(","):
        for act in args.act.split(","):
            out = work / f"{model}-{act}.tar"
            cmd = [sys.executable, "-m", "flashinfer_sm12x", "cache", "export", "--arch", args.arch, "--model", model,
                   "--act", act, "-o", str(out)]
            if args.jobs:
                cmd += ["--jobs", str(args.jobs)]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            archives.append(out)
    return archives


def merge(archives: list[Path], dest: Path) -> dict:
    """Check every archive fully (archive.read_archive) and write their union as one unpacked tree at `dest`."""
    modules: dict[str, archive.PackedModule] = {}
    toolchain: dict[str, str] = {}
    for path in archives:
        index, found, _ = archive.read_archive(path)
        for key, value in index.get("toolchain", {}).items():
            if toolchain.setdefault(key, value) != value:
                raise SystemExit(f"{path} was built by {key} {value}, the others by {toolchain[key]}")
        modules.update(found)
    entries = []
    for packed in modules.values():
        base = dest / archive.MODULES_DIR / packed.target / packed.name
        base.mkdir(parents=True, exist_ok=True)
        (base / "manifest.json").write_bytes(packed.manifest_bytes)
        (base / packed.manifest.artifact).write_bytes(packed.artifact_bytes)
        entries.append({"name": packed.name, "target": packed.target, "artifact": packed.manifest.artifact,
                        "manifest_sha256": hashlib.sha256(packed.manifest_bytes).hexdigest(),
                        "artifact_sha256": packed.manifest.artifact_sha256})
    index = {"format": archive.ARCHIVE_FORMAT, "package": __version__, "host_machine": platform.machine(),
             "toolchain": toolchain, "modules": sorted(entries, key=lambda e: e["name"])}
    (dest / archive.INDEX_NAME).write_text(json.dumps(index, indent=1, sort_keys=True))
    return index


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(tree: Path, name: str, out_dir: Path, plat: str) -> Path:
    """A wheel holding `tree` as package flashinfer_sm12x_kernels_<name>/bundle with its entry point."""
    pkg = "flashinfer_sm12x_kernels_" + re.sub(r"\W", "_", name)
    dist = pkg
    dist_info = f"{dist}-{__version__}.dist-info"
    files: dict[str, bytes] = {
        f"{pkg}/__init__.py": (
            b'"""Prebuilt flashinfer_sm12x kernel modules (a kernel bundle); found through the entry point '
            b'flashinfer_sm12x.kernel_bundles."""\n\nfrom pathlib import Path\n\n\n'
            b'def bundle_dir() -> Path:\n    return Path(__file__).resolve().parent / "bundle"\n'),
    }
    for path in sorted(tree.rglob("*")):
        if path.is_file():
            files[f"{pkg}/bundle/{path.relative_to(tree).as_posix()}"] = path.read_bytes()
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: {__version__}\n"
        f"Summary: Prebuilt flashinfer_sm12x kernels ({name})\nRequires-Dist: flashinfer-sm12x=={__version__}\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: flashinfer_sm12x build_bundle\n"
                                   f"Root-Is-Purelib: false\nTag: py3-none-{plat}\n").encode()
    files[f"{dist_info}/entry_points.txt"] = (
        f"[flashinfer_sm12x.kernel_bundles]\n{name} = {pkg}:bundle_dir\n").encode()
    record = [f"{n},{_record_hash(d)},{len(d)}" for n, d in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{dist}-{__version__}-py3-none-{plat}.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, d in files.items():
            zf.writestr(n, d)
    return wheel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="bundle name, e.g. sm120a (the wheel's suffix)")
    parser.add_argument("-o", "--output", type=Path, default=Path("dist"), help="folder for the wheel")
    parser.add_argument("--from-archive", action="append", type=Path, default=[],
                        help="an archive from `flashinfer-sm12x cache export` (repeatable); else build below")
    parser.add_argument("--arch", help="target to build, e.g. sm_120a")
    parser.add_argument("--model", default="gpt-oss-120b,gpt-oss-20b", help="comma-separated models")
    parser.add_argument("--act", default="mxfp8,mxfp4", help="comma-separated activation modes")
    parser.add_argument("--jobs", type=int, default=None, help="modules built at once (as prebuild --jobs)")
    parser.add_argument("--plat", default=f"linux_{platform.machine()}", help="wheel platform tag")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        work = Path(tmp)
        archives = list(args.from_archive)
        if not archives:
            if not args.arch:
                parser.error("--arch is needed unless --from-archive is given")
            archives = _export(args, work)
        index = merge(archives, work / "tree")
        wheel = write_wheel(work / "tree", args.name, args.output, args.plat)
    size = wheel.stat().st_size
    print(f"{wheel}: {len(index['modules'])} module(s), {size / 2**20:.2f} MiB")
    if size > WHEEL_LIMIT_BYTES:
        print(f"warning: {wheel.name} is over the package index's {WHEEL_LIMIT_BYTES // 2**20} MB per-file limit; "
              "split it by model or act", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
