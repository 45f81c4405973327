# SPDX-License-Identifier: Apache-2.0
"""Typed errors. Every message names the problem and the fix."""

from __future__ import annotations


class Sm12xError(RuntimeError):
    """Base class of flashinfer_sm12x's own errors."""


class ArchError(Sm12xError, ValueError):
    """A build target or device that this module cannot serve (wrong chip, missing a/f suffix)."""


class ToolchainError(Sm12xError):
    """nvcc, the host compiler, ninja or the CUTLASS headers are missing or too old."""


class ConfigError(Sm12xError, ValueError):
    """A template parameter outside the allowed menu, or a bad environment variable."""


class BuildError(Sm12xError):
    """A JIT build failed; the message holds the compiler's output."""


class CacheSecurityError(Sm12xError, PermissionError):
    """The JIT cache is not private to this user, or an artifact failed verification."""


class ArchiveError(Sm12xError, ValueError):
    """A kernel archive or bundle that is refused; `reason` says which check failed.

    Reasons: "unsafe_member" (a symlink, link, device, absolute path or `..` inside), "tampered" (a hash or the
    index does not match the contents), "format" (not an archive of this package, or another package version),
    "target" (built for a target this machine cannot use), "toolchain" (another CUDA major version),
    "sources" (built from headers that differ from this installation's).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{message} [{reason}]")
        self.reason = reason
