# SPDX-License-Identifier: Apache-2.0
"""Command line: `flashinfer-sm12x doctor | cache list | cache clear | cache export | cache import | prebuild`
(also `python -m flashinfer_sm12x`).

Only the commands that need torch or FlashInfer import them, so `--help` and `cache` answer at once.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from .errors import ConfigError, Sm12xError
from .jit.arch import Target, parse_target
from .kernels.grouped_mm_fp4 import ACTIVATIONS
from .registry import DEFAULT_MAX_NUM_TOKENS, MODELS, PREBUILD


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose, render_report

    print("flashinfer-sm12x doctor", flush=True)  # the header first, whatever the checks print
    report = diagnose(selftest=not args.no_selftest)
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
    rows = [("module", "arch", "size", "origin", "built", "last used")]
    rows += [(e.module + ("" if e.valid_manifest else " [no valid manifest]"), e.target,
              f"{e.size_bytes / 2**20:.2f} MiB", e.origin, e.built_at, _when(e.last_used)) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
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


def _targets(text: str) -> list[Target]:
    # No silent suffix correction here: a deployment names exactly what it builds (sm_90 is not sm_90a).
    return [parse_target(name, correct_suffix=False) for name in text.split(",") if name.strip()]


def _plan(args: argparse.Namespace, command: str) -> list:
    """The modules `prebuild` / `cache export` work on: --model's deployment or --ops' families, for --arch."""
    from .jit import cache, prebuild
    from .registry import DEPLOYMENT, Deployment

    targets = _targets(args.arch)
    if not targets:
        raise ConfigError("--arch names no target")
    cache.ensure_private_dir(cache.default_root())  # a cache others can write to: refused once, before any build
    if args.model:
        if args.max_num_tokens < 1:
            raise ConfigError(f"--max-num-tokens must be at least 1, got {args.max_num_tokens}")
        deployment = Deployment(MODELS[args.model], args.act, args.max_num_tokens)
        families = {op: partial(modules_of, deployment=deployment) for op, modules_of in DEPLOYMENT.items()}
        what = f"{command} --model {args.model} --act {args.act} --arch {args.arch}"
    else:
        ops = [op for op in args.ops.split(",") if op] if args.ops else list(PREBUILD)
        unknown = [op for op in ops if op not in PREBUILD]
        if unknown:
            raise ConfigError(f"unknown op(s) {', '.join(unknown)}; known: {', '.join(PREBUILD)}")
        families = {op: PREBUILD[op] for op in ops}
        what = f"{command} --ops {','.join(ops)} --arch {args.arch}"
    items = prebuild.make_plan(targets, families, what)
    if args.limit is not None:
        if args.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {args.limit}")
        items = items[:args.limit]
    return items


def _run_plan(items: list, args: argparse.Namespace, command: str) -> int:
    from .jit import prebuild

    budget = prebuild.job_budget(args.jobs)
    units = sum(len(item.translation_units) for item in items)
    print(f"{command}: {len(items)} module(s), {units} translation unit(s) for {args.arch}; "
          f"modules built at once: {budget.why}", flush=True)
    summary = prebuild.run_plan(items, budget, echo=lambda line: print(line, flush=True))
    if summary.interrupted:
        print(f"{command}: interrupted; stopped the running builds ({len(summary.built)} built, "
              f"{len(summary.cached)} cached before that)", file=sys.stderr)
        return 130
    print(summary.render())
    for name, error in summary.failed:
        print(f"\nFAILED {name}:\n{error}", file=sys.stderr)
    return 1 if summary.failed else 0


def _prebuild(args: argparse.Namespace) -> int:
    return _run_plan(_plan(args, "prebuild"), args, "prebuild")


def _cache_export(args: argparse.Namespace) -> int:
    from .jit import archive
    from .jit.module import module_dir_for, verify_spec

    items = _plan(args, "cache export")
    status = _run_plan(items, args, "cache export")  # builds what is missing; cached modules are only verified
    if status != 0:
        return status
    dirs = []
    for item in items:
        module_dir = module_dir_for(item.spec)
        artifact, why = verify_spec(item.spec, module_dir)
        if artifact is None:
            raise ConfigError(f"{item.spec.name} does not verify after its build: {why}")
        dirs.append(module_dir)
    summary = archive.export_archive(dirs, args.output)
    print(f"exported {len(summary.modules)} module(s) to {summary.path}: {summary.size_bytes / 2**20:.2f} MiB in "
          f"{summary.seconds:.1f} s\nsha256 {summary.sha256}\n"
          f"import elsewhere with: flashinfer-sm12x cache import {summary.path.name} --sha256 {summary.sha256}")
    return 0


def _cache_import(args: argparse.Namespace) -> int:
    from .jit import archive

    targets = _targets(args.arch) if args.arch else None
    summary = archive.import_archive(args.archive, targets=targets, expect_sha256=args.sha256,
                                     skip_stale=args.skip_stale)
    for name in summary.installed:
        print(f"imported {name}")
    for name in summary.kept:
        print(f"kept {name} (already in the cache and verified)")
    for name in summary.stale:
        print(f"skipped {name} (built from other headers than this installation's)")
    stale = f", {len(summary.stale)} skipped as stale" if args.skip_stale else ""
    print(f"{len(summary.installed)} imported, {len(summary.kept)} already present{stale}, from {args.archive} "
          f"(sha256 {summary.sha256}) in {summary.seconds:.1f} s")
    return 0


def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", required=True,
                        help="comma-separated targets with their suffix, e.g. sm_120a,sm_121a (sm_90a: emulation)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--ops", default="", help=f"comma-separated ops (default: all): {', '.join(PREBUILD)}")
    what.add_argument("--model", choices=sorted(MODELS),
                      help="only what this model's deployment loads (with --act, --max-num-tokens)")
    parser.add_argument("--act", choices=ACTIVATIONS, default="mxfp8",
                        help="with --model: the activation format, mxfp8 (W4A8) or mxfp4 (W4A4); default mxfp8")
    parser.add_argument("--max-num-tokens", type=int, default=DEFAULT_MAX_NUM_TOKENS,
                        help=f"with --model: the largest batch in tokens (default {DEFAULT_MAX_NUM_TOKENS})")
    parser.add_argument("--jobs", "--parallel", dest="jobs", type=int, default=None, help=JOBS_HELP)
    parser.add_argument("--limit", type=int, default=None, help="only the first N modules of the plan")


# One description of the two parallelism knobs, used by --help and the README.
JOBS_HELP = ("modules built at once (default: MAX_JOBS, else the CPU count; fewer when MemAvailable cannot hold "
             "them at ~5.5 GB per CUTLASS unit). MAX_JOBS also caps the compiler processes inside one module's "
             "build (default 2)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashinfer-sm12x", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"ops: {', '.join(PREBUILD)}\nmodels (prebuild --model): {', '.join(sorted(MODELS))}")
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
    export = _command(
        cache_sub, "export", _cache_export,
        "build (if needed) and pack modules into one archive for another path, cache or machine",
        "Pack the modules of --ops or a --model deployment for --arch into one archive (a tar with an index and each "
        "module's manifest), building those not cached yet. `cache import` on the other machine verifies and installs "
        "them; loading them needs no compiler there.", plan_arguments=True)
    export.add_argument("-o", "--output", required=True, type=os.path.abspath,
                        help="the archive to write (.tar, or .tar.gz / .tgz compressed)")
    imp = _command(
        cache_sub, "import", _cache_import, "verify an exported archive and install its modules into the cache",
        "Check every member, hash, target, the CUDA major version and the headers the modules were built from, then "
        "install them; any failed check refuses the whole archive and changes nothing.")
    imp.add_argument("archive", type=os.path.abspath, help="the archive from `cache export`")
    imp.add_argument("--arch", default=None,
                     help="accept only these targets (default: what runs on this GPU; any target without a GPU)")
    imp.add_argument("--sha256", default=None, help="refuse the archive unless it has this sha256")
    imp.add_argument("--skip-stale", action="store_true",
                     help="skip the modules built from other headers than this installation's (an archive of an "
                     "earlier checkout) and install the rest, instead of refusing the whole archive")
    _command(sub, "prebuild", _prebuild, "build modules ahead of time (no GPU needed)",
             "Build JIT modules ahead of time: every module of some ops (--ops), or exactly what one model deployment "
             "loads (--model). Modules build in parallel within the cores and memory available (~5.5 GB per CUTLASS "
             "translation unit).", plan_arguments=True)
    return parser


def _command(sub: Any, name: str, func: Callable[[argparse.Namespace], int], summary: str, description: str, *,
             plan_arguments: bool = False) -> argparse.ArgumentParser:
    """A subcommand running `func`, with `summary` in its parent's help and `description` in its own (and the
    module-plan arguments where it builds or packs modules)."""
    parser = sub.add_parser(name, help=summary, description=description)
    if plan_arguments:
        _add_plan_arguments(parser)
    parser.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # a closed pipe surfaces here, inside the handler, not at interpreter exit
        return status
    except BrokenPipeError:
        # The reader went away (`cache list | head -1`): stop quietly, as other command-line tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    except Sm12xError as exc:
        print(f"flashinfer-sm12x: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flashinfer-sm12x: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
