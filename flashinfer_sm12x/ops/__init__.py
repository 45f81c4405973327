# SPDX-License-Identifier: Apache-2.0
"""Ops: one Python file per kernel family (its JIT spec, heuristics, validation and launcher)."""
