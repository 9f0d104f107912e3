"""The registry's errors, each with a stable code (they extend the tree in ``tailguard.errors``)::

    TailguardError
    └── ModelError
        ├── ModelLoadError
        │   └── ModelSignatureError   "model_signature_invalid"  unsigned or badly signed version
        └── ModelSwapError            "model_swap_failed"        a hot swap could not be applied

Both are raised before anything changes: a refused version never loads, a refused swap leaves
the active version serving.
"""

from __future__ import annotations

from tailguard.errors import ModelError, ModelLoadError

__all__ = ["ModelSignatureError", "ModelSwapError"]


class ModelSignatureError(ModelLoadError):
    """A model version's signature is missing where the registry policy requires one, made with
    a key the policy does not list (when required), or does not match the manifest."""

    code = "model_signature_invalid"


class ModelSwapError(ModelError):
    """A hot swap could not be applied: no such model or model rung, outputs or inputs the
    ladder cannot serve, or the owner thread did not take the switch in time."""

    code = "model_swap_failed"
