# SPDX-License-Identifier: Apache-2.0
"""The benchmarks' timing contract (flashinfer_sm12x/testing/benchmarking.py; the parts that need no GPU)."""

from __future__ import annotations

import pytest

from flashinfer_sm12x.testing import benchmarking as common


@pytest.mark.parametrize(("graph", "launches"), [(False, 2), (True, 0), (False, 0)])
def test_time_ms_refuses_launch_counts_it_cannot_time(graph: bool, launches: int) -> None:
    calls = []
    with pytest.raises(ValueError, match="launches"):
        common.time_ms(lambda: calls.append(1), 5, graph=graph, launches=launches)
    assert not calls  # refused before anything ran
