# SPDX-License-Identifier: Apache-2.0
"""Command line: `flashinfer-sm12x doctor | cache list | cache clear | prebuild` (also `python -m flashinfer_sm12x`)."""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .errors import Sm12xError

if TYPE_CHECKING:
    from .jit.module import ModuleSpec


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose, render_report

    report = diagnose(selftest=not args.no_selftest)
    print("flashinfer-sm12x doctor")
    print(render_report(report))
    return 1 if report.problems else 0


def _when(ts: float | None) -> str:
    return "never" if ts is None else datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def _cache_list(args: argparse.Namespace) -> int:
    from .jit import cache

    entries = cache.list_entries()
    print(f"JIT cache: {cache.default_root()}")
    if not entries:
        print("  (empty)")
        return 0
    rows = [("module", "arch", "size", "built", "last used")]
    rows += [(e.module + ("" if e.valid_manifest else " [no valid manifest]"), e.target,
              f"{e.size_bytes / 2**20:.2f} MiB", e.built_at, _when(e.last_used)) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return 0


def _cache_clear(args: argparse.Namespace) -> int:
    from .jit import cache

    removed = cache.clear(module=args.module, arch=args.arch, everything=args.all)
    for path in removed:
        print(f"removed {path}")
    print(f"{len(removed)} removed")
    return 0


def _prebuild(args: argparse.Namespace) -> int:
    from .jit.arch import parse_target
    from .jit.module import build_module
    from .registry import PREBUILD

    ops = args.ops.split(",") if args.ops else list(PREBUILD)
    unknown = [op for op in ops if op not in PREBUILD]
    if unknown:
        raise SystemExit(f"unknown op(s) {unknown}; known: {sorted(PREBUILD)}")
    specs = [spec for a in args.arch.split(",") for op in ops for spec in PREBUILD[op](parse_target(a))]
    if args.parallel < 1:
        raise SystemExit("--parallel must be at least 1")

    def one(item: tuple[int, ModuleSpec]) -> None:
        i, spec = item
        print(f"[{i}/{len(specs)}] {spec.name}", flush=True)
        build_module(spec)

    # Modules build independently (each with its own lock), so a big machine can build several at once.
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        list(pool.map(one, enumerate(specs, 1)))
    print(f"prebuilt {len(specs)} module(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashinfer-sm12x", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="what this machine can build/run; known problems and their fixes")
    doctor.add_argument("--no-selftest", action="store_true", help="skip building the JIT self-test module")
    doctor.set_defaults(func=_doctor)
    cache = sub.add_parser("cache", help="inspect or clear the JIT cache")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    cache_sub.add_parser("list", help="module, arch, size, built, last used").set_defaults(func=_cache_list)
    clear = cache_sub.add_parser("clear", help="remove cached modules")
    which = clear.add_mutually_exclusive_group(required=True)
    which.add_argument("--module", help="a module name (or its op_group prefix)")
    which.add_argument("--arch", help="every module of one target, e.g. sm_120a")
    which.add_argument("--all", action="store_true", help="everything")
    clear.set_defaults(func=_cache_clear)
    prebuild = sub.add_parser("prebuild", help="build modules ahead of time (no GPU needed)")
    prebuild.add_argument("--arch", required=True, help="comma-separated targets, e.g. sm_120a,sm_121a")
    prebuild.add_argument("--ops", default="", help="comma-separated ops (default: all)")
    prebuild.add_argument("--parallel", type=int, default=1,
                          help="modules built at once (each uses MAX_JOBS jobs; mind ~5.5 GB per CUTLASS TU)")
    prebuild.set_defaults(func=_prebuild)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Sm12xError as exc:
        print(f"flashinfer-sm12x: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
