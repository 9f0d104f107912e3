"""Errors of the online store backends, each with a stable ``code`` (subtrees of ``FeatureError``).

Third-party errors (redis-py's ``ConnectionError``, ``TimeoutError``, ``ResponseError``, socket
errors of the invalidation link) are translated into these once, at the adapter boundary::

    FeatureError                        code "feature_error"
    └── FeatureStoreError               code "feature_store_error"        the store answered with an error
        └── FeatureStoreUnavailable     code "feature_store_unavailable"  unreachable or too slow, and no
                                                                          value may be served instead

``FeatureStoreUnavailable`` is what the ladder takes: a ``strict`` view whose value cannot be
proven fresh, or an ``eventual`` view whose cached value is older than its staleness bound,
while the store cannot be read.  It names the views and says why (``reason``).
"""

from __future__ import annotations

from collections.abc import Sequence

from tailguard.errors import FeatureError

__all__ = ["FeatureStoreError", "FeatureStoreUnavailable"]


class FeatureStoreError(FeatureError):
    """The online store answered with an error (wrong key type, a script error, a bad reply)."""

    code = "feature_store_error"


class FeatureStoreUnavailable(FeatureStoreError):
    """The online store cannot be read in time and no cached value may stand in for it.

    ``views`` names the views that could not be served (empty when raised by a plain store,
    which serves no cached values); ``reason`` is ``"unreachable"`` (the connection failed or
    was refused), ``"timeout"`` (no answer within the store's timeout, or within what the
    request had left) or ``"no_time"`` (the request's budget was spent before the read).
    """

    code = "feature_store_unavailable"

    def __init__(self, message: str, *, views: Sequence[str] = (), reason: str = "unreachable") -> None:
        self.views = tuple(views)
        self.reason = reason
        super().__init__(message)
