# SPDX-License-Identifier: Apache-2.0
"""Kernel families: each module describes one family's menu, module specs, compile-proof rule and prebuild set."""
