# SPDX-License-Identifier: Apache-2.0
"""Child process for the JIT concurrency/kill tests: builds + loads the self-test module, prints the answer."""

import sys

from flashinfer_sm12x.jit.selftest import run_selftest

print("ANSWER", run_selftest(int(sys.argv[1]) if len(sys.argv) > 1 else 42), flush=True)
