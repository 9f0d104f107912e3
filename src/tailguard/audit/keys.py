"""Audit keys: the MAC key of the chain and the optional Ed25519 signing key pair.

The **MAC key** (16 to 64 random bytes; ``keygen`` writes 32) is the integrity key of the
chain: whoever holds it can verify the log, and could also rewrite it, so it lives with
the writer and the auditors only (files mode 0600).  The **Ed25519 key pair** adds a
third-party check: the writer signs every checkpoint and retention anchor with the private
key (PKCS#8 PEM, 0600), and anyone with the public key (SubjectPublicKeyInfo PEM, may be
published) can check those signatures — and hence every segment byte up to each signed
checkpoint — without being able to forge any.  Ed25519 needs the ``cryptography`` package
(the ``signing`` extra), imported only when a signing or public key is used.

Owner: any thread (pure functions; a ``Signer`` is immutable).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tailguard.audit.problems import AuditError, Code

__all__ = ["Signer", "check_signature", "load_key", "load_public_key", "load_signer", "new_key",
           "new_signing_key", "write_private"]


def write_private(path: str | Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never overwriting) and write ``data`` to it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def new_key(path: str | Path) -> bytes:
    """Write a new random 32-byte MAC key to ``path`` (mode 0600) and return it."""
    key = os.urandom(32)
    write_private(path, key)
    return key


def load_key(path: str | Path) -> bytes:
    """Read a MAC key written by ``new_key`` (16 to 64 bytes)."""
    key = Path(path).read_bytes()
    if not 16 <= len(key) <= 64:
        raise AuditError(f"an audit key is 16 to 64 bytes; {path} holds {len(key)}")
    return key


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # the optional dependency: say how to get it
        raise AuditError("Ed25519 audit signatures need the 'cryptography' package: "
                         "pip install 'tailguard[signing]'", Code.SIGNING_UNAVAILABLE) from None
    return ed25519


def _serialization() -> Any:
    _ed25519()
    from cryptography.hazmat.primitives import serialization

    return serialization


class Signer:
    """An Ed25519 private key that signs checkpoints and anchors; ``public`` is the raw
    32-byte public key written into every signed entry."""

    def __init__(self, private: Any) -> None:
        s = _serialization()
        self._private = private
        self.public: bytes = private.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)

    @classmethod
    def generate(cls) -> Signer:
        """A new random key pair (tests, ``new_signing_key``)."""
        return cls(_ed25519().Ed25519PrivateKey.generate())

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message`` (about 40 µs)."""
        sig: bytes = self._private.sign(message)
        return sig

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        s = _serialization()
        pem: bytes = self._private.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
        return pem

    def public_pem(self) -> bytes:
        """The public key as SubjectPublicKeyInfo PEM."""
        s = _serialization()
        pem: bytes = self._private.public_key().public_bytes(s.Encoding.PEM,
                                                             s.PublicFormat.SubjectPublicKeyInfo)
        return pem


def new_signing_key(path: str | Path) -> Path:
    """Write a new Ed25519 private key to ``path`` (PEM, mode 0600) and its public key to
    ``path.pub`` (PEM); returns the public key's path."""
    signer = Signer.generate()
    pub = Path(f"{path}.pub")
    if pub.exists():
        raise AuditError(f"{pub} exists; refusing to overwrite a public key")
    write_private(path, signer.private_pem())
    pub.write_bytes(signer.public_pem())
    return pub


def load_signer(path: str | Path) -> Signer:
    """Read a private key written by ``new_signing_key``."""
    s = _serialization()
    try:
        key = s.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise AuditError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise AuditError(f"{path}: not an Ed25519 private key")
    return Signer(key)


def load_public_key(path: str | Path) -> bytes:
    """Read a public key (PEM, or the raw 32 bytes) and return its raw 32 bytes."""
    data = Path(path).read_bytes()
    if len(data) == 32:
        return data
    s = _serialization()
    try:
        key = s.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise AuditError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, _ed25519().Ed25519PublicKey):
        raise AuditError(f"{path}: not an Ed25519 public key")
    raw: bytes = key.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    return raw


def check_signature(public: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is ``public``'s Ed25519 signature of ``message``."""
    ed = _ed25519()
    from cryptography.exceptions import InvalidSignature

    try:
        ed.Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
