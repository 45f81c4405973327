# SPDX-License-Identifier: Apache-2.0
"""The package version, in a module of its own so that modules below the package face can read it without
importing the face (and, through it, every op). The one place the version is written: pyproject.toml reads it
(`[tool.setuptools.dynamic]`)."""

__version__ = "0.1.0"
