"""The whole tailguard exception tree, each error with a stable string ``code``.

Codes are part of the public contract: they appear on the wire, in metrics labels and in
logs, and never change meaning once released.  Third-party exceptions are translated into
this tree once, at the adapter boundary (``raise ModelLoadError(...) from exc``)::

    TailguardError                      code "internal"
    ├── SpecError                       code "spec_invalid"       bad service spec (names the field path)
    ├── ValidationError                 code "invalid_request"    bad request input (names the field)
    │   └── UnknownPriority             code "unknown_priority"
    ├── FeatureError                    code "feature_error"
    │   └── FeatureVersionMismatch      code "feature_version_mismatch" (names the view)
    ├── ModelError                      code "model_error"
    │   ├── ModelLoadError              code "model_load_failed"  missing/corrupt files, at load time
    │   └── ModelNotFound               code "model_not_found"
    └── BudgetExhausted                 code "budget_exhausted"   no rung could answer in time

``UnknownEntity`` is deliberately *not* an exception: an unknown entity gets the view's
declared defaults, a flag in the decision and a counter increment (no exception storm).
"""

from __future__ import annotations

__all__ = [
    "BudgetExhausted",
    "FeatureError",
    "FeatureVersionMismatch",
    "ModelError",
    "ModelLoadError",
    "ModelNotFound",
    "SpecError",
    "TailguardError",
    "UnknownPriority",
    "ValidationError",
]


class TailguardError(Exception):
    """Base of every error tailguard raises on purpose."""

    code = "internal"


class SpecError(TailguardError):
    """The service spec (TOML) is invalid; the message names the field path, e.g. ``$.models[0].name``."""

    code = "spec_invalid"

    def __init__(self, message: str, *, path: str = "", source: str = "") -> None:
        self.path = path
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{message}")


class ValidationError(TailguardError):
    """A request is malformed: wrong dtype, shape or a missing field. ``field`` names it."""

    code = "invalid_request"

    def __init__(self, message: str, *, field: str = "") -> None:
        self.field = field
        super().__init__(message)


class UnknownPriority(ValidationError):
    """The request names a priority class the service does not declare."""

    code = "unknown_priority"


class FeatureError(TailguardError):
    """A feature view or transform failed to build or to run."""

    code = "feature_error"


class FeatureVersionMismatch(FeatureError):
    """A model pins a feature view version that differs from the live one; names the view."""

    code = "feature_version_mismatch"

    def __init__(self, model: str, view: str, pinned: str, live: str) -> None:
        self.model = model
        self.view = view
        self.pinned = pinned
        self.live = live
        super().__init__(
            f"model {model!r} was trained on feature view {view!r} version {pinned!r}, "
            f"but the live version is {live!r}; refusing to activate"
        )


class ModelError(TailguardError):
    """A model failed to load or to run."""

    code = "model_error"


class ModelLoadError(ModelError):
    """Model files are missing, corrupt or inconsistent with their manifest (raised at load)."""

    code = "model_load_failed"


class ModelNotFound(ModelError):
    """The repository holds no version matching the model's version policy."""

    code = "model_not_found"


class BudgetExhausted(TailguardError):
    """No ladder rung could answer within the budget (only when the ladder has no default)."""

    code = "budget_exhausted"
