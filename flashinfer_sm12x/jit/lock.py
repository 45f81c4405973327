# SPDX-License-Identifier: Apache-2.0
"""Cross-process build lock: flock on a private lock file, released by the kernel if the holder dies."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CacheSecurityError
from .progress import say


@contextmanager
def build_lock(path: Path, what: str) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except PermissionError as exc:
        raise CacheSecurityError(
            f"cannot create the build lock {path} ({exc.strerror}): the JIT cache is read-only and {what} is "
            "not built in it. Set FLASHINFER_SM12X_CACHE_DIR to a writable private directory, or build it ahead "
            "of time there with `flashinfer-sm12x prebuild`."
        ) from exc
    except OSError as exc:  # O_NOFOLLOW on a planted symlink raises ELOOP
        raise CacheSecurityError(f"refusing the build lock {path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process that is building {what}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
