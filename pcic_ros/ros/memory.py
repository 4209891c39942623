"""Keeping a long-running coder's resident memory at what it actually holds.

A node codes frame after frame with the same tensor sizes, yet with glibc's default malloc its
resident set crept up by 100 MB and more over a few minutes under load (docs/ros.md, "Memory"). After
the first multi-megabyte buffer is freed, glibc raises its mmap threshold to that size (up to 32 MiB),
so later tensors, scans and images come from the per-thread heaps instead of mappings of their own,
and the free holes they leave in those heaps stay resident. ``malloc_trim`` hands those free pages
back to the kernel; the nodes call it between frames.

Neither CPython, PyTorch nor any package we depend on exposes it, hence ctypes. Without glibc (musl,
macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

__all__ = ["return_freed_memory"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    return getattr(ctypes.CDLL(name), "malloc_trim", None)


def return_freed_memory() -> bool:
    """Give the free pages of every malloc heap back to the kernel. Returns whether any were."""
    malloc_trim = _malloc_trim()
    return malloc_trim is not None and malloc_trim(0) == 1
