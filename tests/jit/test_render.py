# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import pytest

from flashinfer_sm12x.errors import ConfigError
from flashinfer_sm12x.jit.render import render, validate_params
from flashinfer_sm12x.jit.selftest import MENU

MENU_TILES = {"tile_m": (64, 128), "dtype": ("bfloat16", "float16")}


def test_valid_params_pass() -> None:
    assert validate_params({"tile_m": 128, "dtype": "float16"}, MENU_TILES) == {"tile_m": 128, "dtype": "float16"}


@pytest.mark.parametrize(
    "params",
    [
        {"tile_m": "128; } void evil() { system(\"id\"); }", "dtype": "bfloat16"},  # C++ in a tile size
        {"tile_m": "128", "dtype": "bfloat16"},  # right digits, wrong type
        {"tile_m": 96, "dtype": "bfloat16"},  # int outside the menu
        {"tile_m": True, "dtype": "bfloat16"},  # bool posing as an int (True == 1)
        {"tile_m": 128.0, "dtype": "bfloat16"},
        {"tile_m": 128, "dtype": "bfloat16\n#include </etc/passwd>"},
        {"tile_m": 128},  # missing key
        {"tile_m": 128, "dtype": "bfloat16", "extra": 1},  # unknown key
    ],
)
def test_values_outside_the_menu_are_rejected(params: dict) -> None:
    with pytest.raises(ConfigError):
        validate_params(params, MENU_TILES)


def test_render_rejects_before_rendering() -> None:
    with pytest.raises(ConfigError, match="allowed menu"):
        render("jit_selftest.cpp.jinja", {"value": "1); system(\"id\"", "use_extra_header": False}, MENU)


def test_render_output_holds_only_menu_values() -> None:
    text = render("jit_selftest.cpp.jinja", {"value": 3, "use_extra_header": False}, MENU)
    assert "return 3 + SELFTEST_EXTRA;" in text
    assert "{{" not in text and "{%" not in text
