# SPDX-License-Identifier: Apache-2.0
"""benchmarks/_common.py's timing contract (the parts that need no GPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("bench_common", Path(__file__).parents[1] / "benchmarks/_common.py")
common = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(common)


@pytest.mark.parametrize(("graph", "launches"), [(False, 2), (True, 0), (False, 0)])
def test_time_ms_refuses_launch_counts_it_cannot_time(graph: bool, launches: int) -> None:
    calls = []
    with pytest.raises(ValueError, match="launches"):
        common.time_ms(lambda: calls.append(1), 5, graph=graph, launches=launches)
    assert not calls  # refused before anything ran
