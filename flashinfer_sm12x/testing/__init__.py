# SPDX-License-Identifier: Apache-2.0
"""Test helpers shipped with the package (as DeepGEMM ships deep_gemm.testing): case generators, reference GEMMs
and the end-to-end checks the SM90 emulation tests and the native SM12x tests share. Some need pytest."""
