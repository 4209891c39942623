"""The project's user errors: what bad input causes, as opposed to a bug.

Every error that a file, a scan, a calibration, an option or a message given to pcic_ros can cause
derives from ``PcicError`` (and from the built-in class callers already expect, e.g. ValueError). The
CLI reports exactly these, and OSError-type input problems, in one line with exit status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["PcicError", "InvalidArgumentError"]


class PcicError(Exception):
    """Base of the errors bad input causes."""


class InvalidArgumentError(PcicError, ValueError):
    """A value given to pcic_ros that it cannot use (an option, a setting, an array of the wrong shape)."""
