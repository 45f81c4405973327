# SPDX-License-Identifier: Apache-2.0
"""Compile proof without a GPU: build a module's sources to a cubin for one target, then read what ptxas and
the SASS say (registers, spills, shared memory, stack, which MMA instructions are there).

    report = compile_proof(spec)
    report.require(instruction="OMMA.SF", no_spills=True, max_smem=SM120_SMEM_CAPACITY)

Used by the `compile_proof` pytest marker in CI and by scripts/compile_sweep.py for the full tile menu.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ArchError, BuildError
from . import toolchain
from .arch import Target, check_nvcc_supports, parse_target
from .module import ModuleSpec

SM120_SMEM_CAPACITY = 101_376  # bytes of shared memory one block may use on SM120/SM121
# The mainloop shape every shipped GEMM config must have (KernelReport.mainloop_shape): what CUTLASS's own SM120
# block-scaled collective reaches with nvcc 13.0 - 6 MMAs under each barrier wait (2 with a 32-column N tile, whose
# k-block holds fewer MMAs), MMA-free runs of 10-13. W4A8 keeps e2m1 unpacked to 8 bits (twice the registers per
# B fragment) and runs at the 168-register limit of Pingpong's 384 threads: with a MoE epilogue beside it, ptxas
# stretches an MMA-free run to 15 on sm_120a.
MAINLOOP_MMAS_UNDER_WAIT = 6
MAINLOOP_MMAS_UNDER_WAIT_N32 = 2
MAINLOOP_MAX_MMA_FREE = 13
MAINLOOP_MAX_MMA_FREE_W4A8 = 16


def mainloop_requirements(tile_n: int, fmt: str = "mxfp4") -> dict[str, int]:
    """`CompileReport.require` arguments bounding the mainloop shape of a GEMM of format `fmt` with this N tile."""
    under = MAINLOOP_MMAS_UNDER_WAIT_N32 if tile_n <= 32 else MAINLOOP_MMAS_UNDER_WAIT
    free = MAINLOOP_MAX_MMA_FREE_W4A8 if fmt == "mxfp8_mxfp4" else MAINLOOP_MAX_MMA_FREE
    return {"min_mmas_under_wait": under, "max_mma_free": free}
# Templates may define an empty kernel with this name whose template arguments are (smem bytes, stages):
# the mangled name carries them into the cubin, readable without running anything.
FACTS_KERNEL = "flashinfer_sm12x_compile_facts"
_FACTS = re.compile(FACTS_KERNEL + r".*?ILi(\d+)ELi(\d+)EE")


@dataclass
class KernelReport:
    name: str
    registers: int = 0
    static_smem: int = 0
    stack_bytes: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    instructions: Counter[str] = field(default_factory=Counter)  # SASS mnemonic (with modifiers) -> count
    code: list[tuple[int, str, str]] = field(default_factory=list)  # (address, mnemonic, whole instruction)

    def count(self, prefix: str) -> int:
        return sum(n for op, n in self.instructions.items() if op.startswith(prefix))

    def mainloops(self, mma_prefix: str) -> list[tuple[int, int]]:
        """(first, last) address of each innermost loop that issues `mma_prefix` (see `mainloop_spills`)."""
        body_end = max((a for a, op, _ in self.code if op.startswith("EXIT")), default=None)
        loops = []
        for addr, op, text in self.code:
            if body_end is not None and addr > body_end:
                continue
            if op.startswith("BRA") and (m := _BRANCH_TARGET.search(text)):
                target = int(m.group(1), 16)
                if target < addr and any(target <= a <= addr and o.startswith(mma_prefix) for a, o, _ in self.code):
                    loops.append((target, addr))
        return [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]

    def mainloop_spills(self, mma_prefix: str) -> int:
        """STL/LDL instructions inside the innermost loops that issue `mma_prefix` (the mainloops).

        A loop is a backward branch; the innermost ones holding MMAs are those containing no smaller such
        loop. Spill bytes elsewhere (prologue, epilogue, scheduler) do not slow the mainloop. Branches after
        the kernel's last EXIT are ptxas's out-of-line stubs (barrier try-wait retries, divergent-branch
        fallbacks): their jump back into the body is a return, not a loop, so they are not counted as loops."""
        innermost = self.mainloops(mma_prefix)
        return sum(1 for a, op, _ in self.code if op.startswith(("STL", "LDL"))
                   and any(lo <= a <= hi for lo, hi in innermost))

    def mainloop_shape(self, mma_prefix: str) -> MainloopShape:
        """How the mainloops hide the pipeline's barrier wait: for every mbarrier try-wait in them, the MMAs issued
        between it and the first branch on its predicate (the instructions that run while the wait resolves),
        and the longest run of instructions without an MMA."""
        shape = MainloopShape()
        for lo, hi in self.mainloops(mma_prefix):
            body = [(op, text) for a, op, text in self.code if lo <= a <= hi]
            run = 0
            for op, _ in body:
                run = 0 if op.startswith(mma_prefix) else run + 1
                shape.longest_mma_free = max(shape.longest_mma_free, run)
            for i, (op, text) in enumerate(body):
                if not (op.startswith("SYNCS.PHASECHK") and "TRYWAIT" in op):
                    continue
                pred = _PREDICATE_OUT.search(text)
                mmas = 0
                for later_op, later_text in body[i + 1:]:
                    if later_op.startswith(mma_prefix):
                        mmas += 1
                    elif later_op.startswith("BRA") and pred and re.search(rf"@!?{pred.group(1)}\b", later_text):
                        break
                shape.waits.append(mmas)
        return shape


@dataclass
class MainloopShape:
    """See `KernelReport.mainloop_shape`."""

    waits: list[int] = field(default_factory=list)  # per try-wait in the mainloops: MMAs before its check
    longest_mma_free: int = 0

    @property
    def mmas_under_wait(self) -> int:
        """The fewest MMAs any wait hides (0 when a mainloop has no try-wait: nothing to hide)."""
        return min(self.waits, default=0)


@dataclass
class CompileReport:
    module: str
    target: Target
    seconds: float
    kernels: list[KernelReport]
    ptxas_log: str
    dynamic_smem: int | None = None  # CUTLASS kernels size shared memory at launch: read from compile facts
    stages: int | None = None

    def kernel(self, substring: str = "") -> KernelReport:
        """The matching kernel with the most instructions (the GEMM, not a helper kernel)."""
        hits = [k for k in self.kernels if substring in k.name and k.instructions and FACTS_KERNEL not in k.name]
        if not hits:
            raise AssertionError(f"no kernel matching {substring!r} in {[k.name for k in self.kernels]}")
        return max(hits, key=lambda k: sum(k.instructions.values()))

    def require(self, *, instruction: str | None = None, no_spills: bool = False,
                no_mainloop_spills: bool = True, max_smem: int | None = None, kernel: str = "",
                min_mmas_under_wait: int | None = None, max_mma_free: int | None = None) -> KernelReport:
        """Raise AssertionError unless the kernel meets every requirement given. `no_spills` forbids any
        spill; `no_mainloop_spills` (needs `instruction`) forbids STL/LDL in the loops that issue it;
        `min_mmas_under_wait` / `max_mma_free` (need `instruction`) bound the mainloop's shape
        (`KernelReport.mainloop_shape`): MMAs between every barrier try-wait and its check, and the longest run
        of instructions without an MMA."""
        k = self.kernel(kernel)
        problems = []
        if instruction and (min_mmas_under_wait is not None or max_mma_free is not None):
            shape = k.mainloop_shape(instruction)
            if min_mmas_under_wait is not None and (not shape.waits or shape.mmas_under_wait < min_mmas_under_wait):
                problems.append(f"barrier waits in the mainloop hide {shape.waits} MMAs "
                                f"(want >= {min_mmas_under_wait})")
            if max_mma_free is not None and shape.longest_mma_free > max_mma_free:
                problems.append(f"an MMA-free run of {shape.longest_mma_free} instructions in the mainloop "
                                f"(want <= {max_mma_free})")
        if instruction and k.count(instruction) == 0:
            seen = sorted({op for op in k.instructions if "MMA" in op})
            problems.append(f"no {instruction} in SASS (MMA-like instructions seen: {seen})")
        if no_spills and (k.spill_stores or k.spill_loads):
            problems.append(f"spills: {k.spill_stores} B stored, {k.spill_loads} B loaded")
        if no_mainloop_spills and instruction and (n := k.mainloop_spills(instruction)):
            problems.append(f"{n} spill instructions (STL/LDL) inside the mainloop")
        smem = k.static_smem + (self.dynamic_smem or 0)
        if max_smem is not None and smem > max_smem:
            problems.append(f"shared memory {smem} B > {max_smem} B")
        if problems:
            raise AssertionError(f"{self.module} for {self.target}: " + "; ".join(problems))
        return k


def compile_proof(spec: ModuleSpec, out_dir: Path | None = None) -> CompileReport:
    """Compile every CUDA source of `spec` to a cubin for spec.target and inspect it."""
    if spec.target is None:
        raise ArchError(f"{spec.op} is a host-only module: nothing to prove")
    check_nvcc_supports(spec.target, toolchain.find_nvcc().version)
    return _compile(spec, spec.target.gencode, spec.target, out_dir)


def compile_proof_for_arch(spec: ModuleSpec, arch: str, out_dir: Path | None = None) -> CompileReport:
    """Like compile_proof for an arch given as text; a suffix-less arch is refused, naming the suffix."""
    target = parse_target(arch, correct_suffix=False)
    check_nvcc_supports(target, toolchain.find_nvcc().version)
    return _compile(spec, target.gencode, target, out_dir)


def _compile(spec: ModuleSpec, gencode: str, target: Target, out_dir: Path | None) -> CompileReport:
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix=f"proof-{spec.op}-") as tmp:
            return _compile_in(spec, gencode, target, Path(tmp))
    out_dir.mkdir(parents=True, exist_ok=True)
    return _compile_in(spec, gencode, target, out_dir)


def _compile_in(spec: ModuleSpec, gencode: str, target: Target, work: Path) -> CompileReport:
    nvcc = str(toolchain.find_nvcc().path)
    flags = [f for f in spec.cuda_flags() if not f.startswith("-gencode")]
    kernels: list[KernelReport] = []
    logs = []
    start = time.monotonic()
    for src in spec.sources:
        if not src.name.endswith(".cu"):
            continue
        path = work / src.name
        path.write_text(src.text)
        cubin = work / (src.name + ".cubin")
        cmd = [nvcc, *flags, gencode, "-cubin", "-Xptxas=-v", "-o", str(cubin), str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(_explain_failure(proc.stderr + proc.stdout, gencode))
        logs.append(proc.stderr)
        kernels += _merge(parse_ptxas(proc.stderr), parse_sass(_sass(cubin)))
    report = CompileReport(spec.name, target, time.monotonic() - start, kernels, "".join(logs))
    for k in kernels:
        if m := _FACTS.search(k.name):
            report.dynamic_smem, report.stages = int(m.group(1)), int(m.group(2))
    return report


def _explain_failure(output: str, gencode: str) -> str:
    hint = ""
    if re.search(r"code=sm_\d+(,|$)", gencode) or "not supported on" in output or "block scale" in output:
        hint = (
            "\nhint: the block-scaled MMA and cvt.e2m1x2 need an arch-specific target: use sm_120a / sm_121a "
            "(the 'a' suffix) or sm_120f (the 'f' family suffix), never plain sm_120."
        )
    return f"nvcc failed for {gencode}:\n{output[-8000:]}{hint}"


def _sass(cubin: Path) -> str:
    cuobjdump, nvdisasm = toolchain.find_sass_tools()
    env = {"PATH": f"{nvdisasm.parent}:/usr/bin:/bin"}  # cuobjdump runs nvdisasm from PATH
    proc = subprocess.run([str(cuobjdump), "-sass", str(cubin)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise BuildError(f"cuobjdump -sass {cubin} failed:\n{proc.stderr}")
    return proc.stdout


_ENTRY = re.compile(r"(?:Compiling entry function|Function properties for) '?([\w$.]+)'?")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> dict[str, KernelReport]:
    reports: dict[str, KernelReport] = {}
    current: KernelReport | None = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = reports.setdefault(m.group(1), KernelReport(m.group(1)))
        elif current is not None and (m := _PROPS.search(line)):
            current.stack_bytes, current.spill_stores, current.spill_loads = map(int, m.groups())
        elif current is not None and (m := _USED.search(line)):
            current.registers = int(m.group(1))
            if s := _SMEM.search(line):
                current.static_smem = int(s.group(1))
    return reports


_FUNCTION = re.compile(r"^\s*Function : (\S+)")
_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+((?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_.]*)[^;]*);")
_PREDICATE_OUT = re.compile(r"TRYWAIT\S*\s+(U?P\d+),")
_BRANCH_TARGET = re.compile(r"BRA(?:\.\w+)*\s+(?:!?U?P[T\d]+,\s*)?0x([0-9a-f]+)")


def parse_sass(sass: str) -> dict[str, list[tuple[int, str, str]]]:
    """Per function: its instructions in order as (address, mnemonic with modifiers, text)."""
    functions: dict[str, list[tuple[int, str, str]]] = {}
    current: list[tuple[int, str, str]] | None = None
    for line in sass.splitlines():
        if m := _FUNCTION.match(line):
            current = functions.setdefault(m.group(1), [])
        elif current is not None and (m := _INSTRUCTION.search(line)):
            current.append((int(m.group(1), 16), m.group(3), m.group(2)))
    return functions


def _merge(ptxas: dict[str, KernelReport], sass: dict[str, list[tuple[int, str, str]]]) -> list[KernelReport]:
    for name, code in sass.items():
        report = ptxas.setdefault(name, KernelReport(name))
        report.code = code
        report.instructions = Counter(op for _, op, _ in code)
    return list(ptxas.values())
