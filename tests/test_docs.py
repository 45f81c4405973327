# SPDX-License-Identifier: Apache-2.0
"""The documentation's promises (CPU-only): every public function the package face exports for users has a numpy-style
Examples section whose CPU lines run; docs/architecture.md cites only files that exist; the version is written once;
the benchmarks import the installed package without editing sys.path."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

import flashinfer_sm12x as fs
from flashinfer_sm12x._version import __version__

ROOT = Path(fs.__file__).resolve().parent.parent
# The public functions of flashinfer_sm12x/__init__.py that users call (the dequantizers are the quantizers' inverses).
DOCUMENTED = ("mm_fp4", "mm_mxfp8_mxfp4", "fused_moe", "prepare_gpt_oss_weights", "cutlass_fused_moe", "mxfp4_quantize",
              "mxfp8_quantize", "nvfp4_quantize", "grouped_mm_fp4")


@pytest.mark.parametrize("name", DOCUMENTED)
def test_public_function_has_an_examples_section(name: str) -> None:
    assert name in fs.__all__
    doc = getattr(fs, name).__doc__ or ""
    assert re.search(r"\n    Examples\n    --------\n", doc), f"{name}'s docstring has no Examples section"
    assert ">>> " in doc.split("Examples", 1)[1], f"{name}'s Examples section has no example"


@pytest.mark.parametrize("name", DOCUMENTED)
def test_examples_run_where_no_gpu_is_needed(name: str) -> None:
    """Lines that need a GPU are marked `# doctest: +SKIP`; the rest (imports, CPU quantization, the heuristic) run."""
    fn = getattr(fs, name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder(recurse=False).find(fn, name, globs={}):
        runner.run(test)
    assert runner.failures == 0


def test_architecture_doc_cites_only_files_that_exist() -> None:
    text = (ROOT / "docs/architecture.md").read_text()
    cited = set(re.findall(r"`((?:flashinfer_sm12x|include|jit|csrc|tests|benchmarks|scripts|docs)/[\w./-]+)`", text))
    assert len(cited) > 20
    # The worked example's family (e2m1_decode) is the one to be added, and data/ exists in a wheel only.
    hypothetical = ("e2m1_decode", "flashinfer_sm12x/data/")
    missing = sorted(p for p in cited if "<" not in p and not any(h in p for h in hypothetical)
                     and not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md cites missing files: {missing}"


def test_version_is_written_once() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "flashinfer_sm12x._version.__version__"}
    assert fs.__version__ == __version__


@pytest.mark.parametrize("script", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_do_not_edit_sys_path(script: Path) -> None:
    source = script.read_text()
    assert "sys.path" not in source and "from benchmarks" not in source
