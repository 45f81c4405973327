# SPDX-License-Identifier: Apache-2.0
"""Rendering kernel sources from jit/*.jinja.

Only values from an op's declared menu reach a template: ints from the tile menu, dtype and schedule names
from fixed sets. A value outside the menu (a string with C++ in it, a bool posing as an int) is rejected
before rendering, so no caller-controlled text ever lands in generated C++.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2

from ..errors import ConfigError
from ..paths import TEMPLATE_DIR

Menu = Mapping[str, tuple[Any, ...]]

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # C++, not HTML: safety comes from validate_params
)


def validate_params(params: Mapping[str, Any], menu: Menu) -> dict[str, Any]:
    missing = sorted(set(menu) - set(params))
    extra = sorted(set(params) - set(menu))
    if missing or extra:
        raise ConfigError(f"template parameters do not match the menu: missing {missing}, unknown {extra}")
    clean: dict[str, Any] = {}
    for key, allowed in menu.items():
        value = params[key]
        # type() rather than isinstance: True is an int, "128" is not 128.
        if type(value) not in (int, str, bool) or not any(
            type(value) is type(choice) and value == choice for choice in allowed
        ):
            raise ConfigError(f"{key}={value!r} is not in the allowed menu {list(allowed)}")
        clean[key] = value
    return clean


def render(template: str, params: Mapping[str, Any], menu: Menu) -> str:
    clean = validate_params(params, menu)
    try:
        return _ENV.get_template(template).render(**clean)
    except jinja2.TemplateError as exc:
        raise ConfigError(f"rendering {template} failed: {exc}") from exc
