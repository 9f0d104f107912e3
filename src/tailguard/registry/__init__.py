"""The model registry: signed manifests, the repository catalog, the ``models`` commands and
in-process hot swap.

* ``registry.sign``: detached ``manifest.sig`` signatures (Ed25519 or HMAC-SHA256) and the
  repository's ``registry.toml`` policy, enforced by ``models.repository.load_model``;
* ``registry.catalog``: every model and version of a service directory, with verification;
* ``registry.commands``: ``tailguard models list|show|verify|sign``;
* ``registry.swap``: load and verify a version off the reply path, warm it up in the owner's
  idle time, then switch an engine rung to it atomically on the engine's owner thread;
* ``registry.owner``: ``OwnerInbox``, work handed to the engine's owner thread;
* ``registry.problems``: ``ModelSignatureError`` and ``ModelSwapError``.

The submodules are imported by name (``from tailguard.registry.swap import swap_model``):
``models.repository`` imports ``registry.sign``, so this package imports nothing eagerly.
"""

from __future__ import annotations

__all__: list[str] = []
