# SPDX-License-Identifier: Apache-2.0
"""Progress lines for long work (JIT builds): which translation unit, how long so far."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from .. import env


def say(message: str) -> None:
    if not env.quiet():
        print(f"[flashinfer_sm12x] {message}", file=sys.stderr, flush=True)


class Heartbeat:
    """Prints `describe(elapsed)` every `period` seconds until stopped (a context manager)."""

    def __init__(self, describe: Callable[[float], str], period: float = 15.0) -> None:
        self._describe = describe
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            say(self._describe(time.monotonic() - self.start))

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
