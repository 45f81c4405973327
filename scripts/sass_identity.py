#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Proof that a refactor left the machine code alone, without a GPU: render the same module specs from two
checkouts, compile each CUDA source to a cubin for the spec's target (one nvcc at a time), and compare the SASS of
every kernel, instruction by instruction and encoding by encoding, plus ptxas's resource use.

    python scripts/sass_identity.py /path/to/before /path/to/after            # the default spec set
    python scripts/sass_identity.py BEFORE AFTER --spec grouped_mm_fp4:sm_90a:mxfp4:pingpong_64x128x128:store

A GEMM spec is `family:target:format:tactic[:epilogue[:out_dtype]]` (tactic as `Tactic.name` spells it), any other
family's `family:target:variant`. Each checkout
renders its own sources in a child process (PYTHONPATH=checkout), so each side uses its own templates and headers.
What may legitimately differ is normalised away: instruction addresses, and kernel names - they are demangled
(c++filt) and `--rename OLD=NEW` substitutions are applied to the "before" side, so a kernel whose namespace moved
is matched with itself. Cubins are cached under --cache by a hash of the rendered source, the flags and the
checkout's include/ and csrc/ trees, so a rerun recompiles only what changed. Exit status 1 on any difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# The default set: every mainloop and epilogue a shipped spec uses (jit/gemm_includes.cu.jinja picks the mainloop).
DEFAULT_SPECS = (
    "mm_fp4:sm_120a:mxfp4:pingpong_64x128x128",  # 64-row mainloop (m64_pingpong.cuh)
    "mm_fp4:sm_120a:mxfp4:cooperative_128x128x128",  # CUTLASS's SM120 collective
    "mm_fp4:sm_120a:mxfp8_mxfp4:pingpong_128x64x128",  # W4A8, CUTLASS's collective
    "grouped_mm_fp4:sm_120a:mxfp4:pingpong_64x128x128:store",
    "grouped_mm_fp4:sm_120a:mxfp4:pingpong_64x128x128:swiglu_quantize",
    "grouped_mm_fp4:sm_120a:mxfp4:pingpong_64x128x128:store_routed",
    "grouped_mm_fp4:sm_120a:mxfp4:pingpong_128x128x128:store",  # byte_tma.cuh
    "grouped_mm_fp4:sm_120a:mxfp8_mxfp4:pingpong_128x64x128:swiglu_quantize",  # grouped_collective.cuh
    "grouped_mm_fp4:sm_90a:mxfp4:pingpong_64x128x128:store",  # emulated m64
    "grouped_mm_fp4:sm_90a:mxfp4:pingpong_128x128x128:store",  # emulated byte_tma
    "grouped_mm_fp4:sm_90a:mxfp8_mxfp4:pingpong_128x64x128:store",  # w4a8_emulated.cuh
    "quantize:sm_120a:mxfp4",  # the block quantizers the MoE activation shares
    "quantize:sm_120a:mxfp8",
    "moe_glue:sm_120a:mxfp4",  # the standalone activation (common/swiglu.cuh)
)
_TACTIC = re.compile(r"^(\w+?)_(\d+)x(\d+)x(\d+)(_swapab)?$")


def render_specs(specs: list[str]) -> list[dict]:
    """(child process) Each spec's CUDA sources and nvcc flags, rendered by the checkout on PYTHONPATH."""
    from flashinfer_sm12x.jit.arch import parse_target
    from flashinfer_sm12x.kernels import FAMILIES
    from flashinfer_sm12x.kernels.family import GemmFamily, Tactic

    out = []
    for text in specs:
        family, target, fmt, *rest = text.split(":")
        if not isinstance(FAMILIES[family], GemmFamily):
            spec = FAMILIES[family].spec_of(parse_target(target), fmt)
            out.append(_rendered(text, spec))
            continue
        tactic, *rest = rest
        m = _TACTIC.match(tactic)
        if m is None:
            raise SystemExit(f"bad tactic {tactic!r} in {text!r} (want e.g. pingpong_64x128x128)")
        tac = Tactic(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)), bool(m.group(5)))
        epilogue = rest[0] if rest else "store"
        out_dtype = rest[1] if len(rest) > 1 else "bfloat16"
        out.append(_rendered(text, FAMILIES[family].spec(parse_target(target), fmt, tac, out_dtype, epilogue)))
    return out


def _rendered(text: str, spec) -> dict:
    flags = [f for f in spec.cuda_flags() if not f.startswith("-gencode")]
    return {"spec": text, "gencode": spec.target.gencode, "flags": flags,
            "sources": [(s.name, s.text) for s in spec.sources if s.name.endswith(".cu")]}


def _tree_digest(root: Path) -> str:
    """A hash of every file under root's include/ and csrc/ (what the rendered sources may include)."""
    h = hashlib.sha256()
    for sub in ("include", "csrc"):
        for path in sorted((root / sub).rglob("*")):
            if path.is_file():
                h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _render_in(checkout: Path, specs: list[str]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import flashinfer_sm12x as p; "
            "assert p.__file__.startswith(sys.argv[1]), p.__file__; "
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import sass_identity as s; "
            "print(json.dumps(s.render_specs(sys.argv[2:])))")
    proc = subprocess.run([sys.executable, "-c", code, str(checkout), *specs], capture_output=True, text=True,
                          env=env, cwd=checkout)
    if proc.returncode != 0:
        raise SystemExit(f"rendering in {checkout} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def compile_cubin(rendered: dict, checkout: Path, cache: Path, tree: str) -> tuple[Path, str]:
    """The cubin and ptxas -v log of one rendered spec (its one CUDA source), compiled once per cache key."""
    from flashinfer_sm12x.jit import toolchain

    (name, text), = rendered["sources"]
    flags = [f.replace(str(checkout), "<checkout>") for f in rendered["flags"]]
    key = hashlib.sha256(json.dumps([text, flags, rendered["gencode"], tree]).encode()).hexdigest()[:24]
    work = cache / key
    cubin, log = work / (name + ".cubin"), work / "ptxas.log"
    if cubin.is_file() and log.is_file():
        return cubin, log.read_text()
    work.mkdir(parents=True, exist_ok=True)
    (work / name).write_text(text)
    cmd = [str(toolchain.find_nvcc().path), *rendered["flags"], rendered["gencode"], "-cubin", "-Xptxas=-v",
           "-o", str(cubin) + ".tmp", str(work / name)]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"nvcc failed for {rendered['spec']} in {checkout}:\n{proc.stderr[-6000:]}")
    os.replace(str(cubin) + ".tmp", cubin)
    log.write_text(proc.stderr)
    print(f"    compiled {rendered['spec']} ({checkout.name}) in {time.monotonic() - start:.0f} s", flush=True)
    return cubin, proc.stderr


@dataclass
class Kernel:
    name: str  # demangled, after renames
    code: list[str] = field(default_factory=list)  # instruction text and encoding, addresses dropped
    resources: tuple = ()


_FUNCTION = re.compile(r"^\s*Function : (\S+)")
_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(.*?;)\s*/\*\s*(0x[0-9a-f]+)\s*\*/")
_ENCODING = re.compile(r"^\s*/\*\s*(0x[0-9a-f]+)\s*\*/\s*$")
_MANGLED = re.compile(r"_Z\w+")


def _demangler(names: set[str], renames: list[tuple[str, str]]) -> dict[str, str]:
    ordered = sorted(names)
    proc = subprocess.run(["c++filt", "--no-recurse-limit"], input="\n".join(ordered), capture_output=True, text=True)
    plain = proc.stdout.splitlines() if proc.returncode == 0 else ordered
    out = {}
    for mangled, text in zip(ordered, plain, strict=True):
        for old, new in renames:
            text = text.replace(old, new)
        out[mangled] = text
    return out


def kernels_of(cubin: Path, ptxas_log: str, renames: list[tuple[str, str]]) -> dict[str, Kernel]:
    """Every function's SASS (text + encodings) and resource use, keyed by its normalised name."""
    from flashinfer_sm12x.jit.compile_proof import _sass, parse_ptxas

    sass = _sass(cubin)
    names = set(_MANGLED.findall(sass)) | set(parse_ptxas(ptxas_log))
    demangle = _demangler(names, renames)

    def norm(text: str) -> str:
        return _MANGLED.sub(lambda m: demangle.get(m.group(0), m.group(0)), text)

    funcs: dict[str, Kernel] = {}
    current: Kernel | None = None
    for line in sass.splitlines():
        if m := _FUNCTION.match(line):
            name = norm(m.group(1))
            current = funcs.setdefault(name, Kernel(name))
        elif current is not None and (m := _LINE.search(line)):
            current.code.append(f"{norm(m.group(1))} {m.group(2)}")
        elif current is not None and current.code and (m := _ENCODING.match(line)):
            current.code[-1] += " " + m.group(1)
    for raw, rep in parse_ptxas(ptxas_log).items():
        k = funcs.setdefault(norm(raw), Kernel(norm(raw)))
        k.resources = (rep.registers, rep.static_smem, rep.stack_bytes, rep.spill_stores, rep.spill_loads)
    return funcs


def compare(before: dict[str, Kernel], after: dict[str, Kernel]) -> tuple[int, int, list[str]]:
    """(kernels compared, their instructions, the differences)."""
    problems = []
    for name in sorted(set(before) - set(after)):
        problems.append(f"only before: {name[:160]}")
    for name in sorted(set(after) - set(before)):
        problems.append(f"only after: {name[:160]}")
    for name in sorted(set(before) & set(after)):
        b, a = before[name], after[name]
        if b.resources != a.resources:
            problems.append(f"resources {b.resources} -> {a.resources}: {name[:120]}")
        if b.code != a.code:
            pairs = enumerate(zip(b.code, a.code, strict=False))
            first = next((i for i, (x, y) in pairs if x != y), min(len(b.code), len(a.code)))
            problems.append(f"SASS differs at instruction {first} of {len(b.code)}/{len(a.code)}: {name[:120]}\n"
                            f"      before: {b.code[first] if first < len(b.code) else '-'}\n"
                            f"      after:  {a.code[first] if first < len(a.code) else '-'}")
    both = set(before) & set(after)
    return len(both), sum(len(after[name].code) for name in both), problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--spec", action="append", default=[], help="repeatable; default: the shipped-mainloop set")
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                        help="text substituted in the before side's demangled names (a moved namespace)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/sass_identity"))
    parser.add_argument("--only-before", action="store_true", help="compile the before side only (warm the cache)")
    args = parser.parse_args()
    specs = args.spec or list(DEFAULT_SPECS)
    renames = [tuple(r.split("=", 1)) for r in args.rename]
    sides = [("before", args.before.resolve())] + ([] if args.only_before else [("after", args.after.resolve())])
    rendered = {side: _render_in(path, specs) for side, path in sides}
    trees = {side: _tree_digest(path) for side, path in sides}
    rows, failed = [], False
    for i, spec in enumerate(specs):
        found = {}
        for side, path in sides:  # one nvcc at a time
            cubin, log = compile_cubin(rendered[side][i], path, args.cache, trees[side])
            found[side] = kernels_of(cubin, log, renames if side == "before" else [])
        if args.only_before:
            rows.append((spec, len(found["before"]), sum(len(k.code) for k in found["before"].values()), "cached"))
            continue
        count, instructions, problems = compare(found["before"], found["after"])
        failed |= bool(problems)
        rows.append((spec, count, instructions, "identical" if not problems else "DIFFERENT"))
        for p in problems:
            print(f"  {spec}: {p}")
    width = max(len(row[0]) for row in rows)
    print(f"\n{'spec':<{width}}  kernels  instructions  verdict")
    for spec, count, instructions, verdict in rows:
        print(f"{spec:<{width}}  {count:>7}  {instructions:>12}  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
