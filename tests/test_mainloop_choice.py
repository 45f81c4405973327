# SPDX-License-Identifier: Apache-2.0
"""The GEMM mainloop is chosen twice: by jit/gemm_includes.cu.jinja (which header a rendered source includes) and by
gemm/config.cuh's `mainloop_kind` (which type the config instantiates). The rendered source asserts at compile time
that both agree (`Config::kMainloopKind == kIncludedMainloop`); this CPU test renders every shipped spec of both GEMM
families on every target and checks the same agreement without a compiler: the C++ function is read from the header
and evaluated for the spec's parameters."""

from __future__ import annotations

import re

import pytest

from flashinfer_sm12x.jit.arch import SUPPORTED, parse_target
from flashinfer_sm12x.kernels import FAMILIES
from flashinfer_sm12x.kernels.family import GemmFamily
from flashinfer_sm12x.paths import INCLUDE_DIR

CONFIG = INCLUDE_DIR / "flashinfer_sm12x" / "gemm" / "config.cuh"
MAINLOOPS = INCLUDE_DIR / "flashinfer_sm12x" / "gemm" / "mainloops"
_FUNCTION = re.compile(r"template <bool Emulated, bool M64, bool Grouped, bool PackedFp4>\s*"
                       r"constexpr MainloopKind mainloop_kind\(\) \{(.*?)\n\}", re.S)
_RULE = re.compile(r"^\s*(?:if \((.*)\) )?return MainloopKind::(\w+);\s*$")


def cpp_mainloop_kind(emulated: bool, m64: bool, grouped: bool, packed_fp4: bool) -> str:
    """gemm/config.cuh's mainloop_kind(), evaluated: its body is a list of `if (condition) return kind;` rules."""
    match = _FUNCTION.search(CONFIG.read_text())
    assert match, "mainloop_kind() not found in gemm/config.cuh: update this test with it"
    names = {"Emulated": emulated, "M64": m64, "Grouped": grouped, "PackedFp4": packed_fp4}
    for line in match.group(1).strip().splitlines():
        rule = _RULE.match(line)
        assert rule, f"unexpected line in mainloop_kind(): {line!r}"
        condition, kind = rule.groups()
        if condition is None:
            return kind
        expr = condition.replace("&&", " and ").replace("||", " or ").replace("!", " not ")
        assert set(re.findall(r"[A-Za-z_]\w*", expr)) <= set(names) | {"and", "or", "not"}, condition
        if eval(expr, {"__builtins__": {}}, names):  # noqa: S307 - names and boolean operators only (checked above)
            return kind
    raise AssertionError("mainloop_kind() has no final return")


def shipped_specs():
    for family in FAMILIES.values():
        if not isinstance(family, GemmFamily):
            continue
        for name in SUPPORTED:
            target = parse_target(name)
            for fmt in family.formats_for(target):
                for tactic in family.shipped(fmt, target):
                    for epilogue in family.epilogues:
                        if family.serves(epilogue, fmt, tactic):
                            yield family, target, fmt, tactic, epilogue


CASES = list(shipped_specs())


def test_every_gemm_family_and_target_is_covered() -> None:
    assert {f.name for f, *_ in CASES} == {"mm_fp4", "grouped_mm_fp4"}
    assert {t.name for _, t, *_ in CASES} == set(SUPPORTED)


@pytest.mark.parametrize(("family", "target", "fmt", "tactic", "epilogue"), CASES,
                         ids=[f"{f.name}-{t.name}-{fmt}-{tac.name}-{e}" for f, t, fmt, tac, e in CASES])
def test_rendered_mainloop_matches_config(family, target, fmt, tactic, epilogue) -> None:
    text = family.spec(target, fmt, tactic, "bfloat16", epilogue).sources[0].text
    included = re.findall(r"MainloopKind kIncludedMainloop =\s*flashinfer_sm12x::gemm::MainloopKind::(\w+);", text)
    assert len(included) == 1, "the rendered source must name the mainloop it includes once"
    assert "static_assert(Config::kMainloopKind == kIncludedMainloop" in text
    expected = cpp_mainloop_kind(target.emulated, tactic.tile_m == 64, family.name == "grouped_mm_fp4",
                                 fmt != "mxfp8_mxfp4")
    assert included[0] == expected
    headers = re.findall(r'#include "flashinfer_sm12x/gemm/mainloops/(\w+\.cuh)"', text)
    if expected == "Collective":
        assert headers == []  # CUTLASS's collective as built: no header of ours
    else:
        assert len(headers) == 1
        assert f"struct Mainloop<Collective, MainloopKind::{expected}, Grouped>" in (MAINLOOPS / headers[0]).read_text()
