"""The optimizer's error (it extends the tree in ``tailguard.errors``)::

    TailguardError
    └── ModelError
        └── OptimizeError   "optimize_failed"   unreadable validation data, a missing extra,
                                                a model the optimizer cannot work on

Raised before anything is written: a failed run leaves the repository as it was.
"""

from __future__ import annotations

from tailguard.errors import ModelError

__all__ = ["OptimizeError"]


class OptimizeError(ModelError):
    """``tailguard optimize`` cannot run: the validation file is missing, unreadable or lacks
    a column, an optional package is not installed, or the model version has no usable form."""

    code = "optimize_failed"
