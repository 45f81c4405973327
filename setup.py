# SPDX-License-Identifier: Apache-2.0
"""Build step that carries the kernel sources into the wheel.

The C++ headers (include/), the binding helpers (csrc/) and the Jinja templates (jit/) stay top-level folders of
the repository. A wheel build copies them to flashinfer_sm12x/data/{include,csrc,jit} inside the build tree, so an
installed package can JIT-compile its kernels; an editable install keeps using the repository folders in place
(flashinfer_sm12x/paths.py picks the layout). The sdist carries the folders through MANIFEST.in.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA_FOLDERS = ("include", "csrc", "jit")
PACKAGE = "flashinfer_sm12x"


class BuildPyWithKernelSources(build_py):
    """build_py that also copies include/, csrc/ and jit/ to flashinfer_sm12x/data/ in the build tree."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install reads the repository folders directly
        data_dir = Path(self.build_lib) / PACKAGE / "data"
        for folder in DATA_FOLDERS:
            source = ROOT / folder
            if not source.is_dir():
                raise FileNotFoundError(f"{source} is missing: the wheel would not be able to build any kernel")
            target = data_dir / folder
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not self.editable_mode:
            data_dir = Path(self.build_lib) / PACKAGE / "data"
            outputs += [str(p) for p in data_dir.rglob("*") if p.is_file()]
        return outputs


setup(cmdclass={"build_py": BuildPyWithKernelSources})
