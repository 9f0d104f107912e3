"""Detached manifest signatures and the repository's signature policy.

A model version may carry ``manifest.sig`` next to its ``manifest.json``: a small JSON object
naming the algorithm (``ed25519`` or ``hmac-sha256``), the key id and the signature over the
manifest's canonical bytes (``models.manifest.canonical_bytes``: every field, ``content_hash``
included — and ``content_hash`` covers every artifact's SHA-256, so the signature vouches for
the files too).

Keys are the audit log's (``tailguard.audit.keys``): an Ed25519 private key in PEM
(``tailguard audit keygen --ed25519 PATH`` writes it and ``PATH.pub``) signs and its public
key verifies; a 16-64 byte MAC key (``tailguard audit keygen PATH``) does both.  A key id is
the first 16 hex digits of a SHA-256 over the algorithm and the public key (Ed25519) or the
MAC key, so a signature names the key that can check it without revealing it.

The policy lives in ``<repository>/registry.toml``::

    require_signature = true          # refuse unsigned versions
    public_keys = ["keys/release.pub"] # Ed25519 public keys (paths relative to the repository)
    hmac_keys = []                     # MAC keys that may also verify

With no policy file nothing is required.  A signature made with a key the policy knows is
always checked (a bad one is refused even when signatures are not required); one made with
an unknown key counts as unsigned.

Owner: any thread (pure functions over files).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec

from tailguard.audit.keys import Signer, check_signature, load_key, load_public_key, load_signer
from tailguard.errors import ModelLoadError, TailguardError
from tailguard.models.manifest import MANIFEST, canonical_bytes, read_manifest
from tailguard.registry.problems import ModelSignatureError

__all__ = [
    "POLICY",
    "SIGNATURE",
    "Policy",
    "Signature",
    "SignatureStatus",
    "SigningKey",
    "check_version_signature",
    "key_id",
    "load_policy",
    "load_signing_key",
    "read_signature",
    "sign_version",
]

SIGNATURE = "manifest.sig"
POLICY = "registry.toml"

Algorithm = Literal["ed25519", "hmac-sha256"]


class Signature(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The content of ``manifest.sig``."""

    algorithm: Algorithm
    key_id: str
    #: Hex of the Ed25519 signature (64 bytes) or the HMAC-SHA256 tag (32 bytes).
    signature: str
    #: The manifest's content hash when signed (informative; the signature covers it).
    content_hash: str = ""
    signed_at: str = ""


def key_id(algorithm: str, material: bytes) -> str:
    """The id of a key: 16 hex digits of SHA-256 over the algorithm and the public key (Ed25519)
    or the MAC key (HMAC)."""
    digest = hashlib.sha256(b"tailguard-registry-key\0" + algorithm.encode() + b"\0" + material)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """A key that signs manifests: an Ed25519 signer or a MAC key (exactly one is set)."""

    signer: Signer | None = None
    mac_key: bytes | None = None

    @property
    def algorithm(self) -> Algorithm:
        """``ed25519`` or ``hmac-sha256``."""
        return "ed25519" if self.signer is not None else "hmac-sha256"

    @property
    def key_id(self) -> str:
        """The id a signature made with this key carries."""
        if self.signer is not None:
            return key_id("ed25519", self.signer.public)
        assert self.mac_key is not None
        return key_id("hmac-sha256", self.mac_key)

    def sign(self, message: bytes) -> bytes:
        """The signature (Ed25519) or tag (HMAC-SHA256) of ``message``."""
        if self.signer is not None:
            return self.signer.sign(message)
        assert self.mac_key is not None
        return hmac.new(self.mac_key, message, hashlib.sha256).digest()


def load_signing_key(path: str | Path) -> SigningKey:
    """Read a signing key: an Ed25519 private key in PEM, else a raw 16-64 byte MAC key."""
    p = Path(path)
    try:
        head = p.read_bytes()[:64]
        if head.lstrip().startswith(b"-----BEGIN"):
            return SigningKey(signer=load_signer(p))
        return SigningKey(mac_key=load_key(p))
    except OSError as exc:
        raise ModelSignatureError(f"cannot read signing key {p}: {exc.strerror}") from exc
    except TailguardError as exc:
        raise ModelSignatureError(f"signing key {p}: {exc}") from exc


@dataclass(frozen=True)
class Policy:
    """The repository's signature policy: whether a signature is required, and the keys
    (by key id) that verify one: Ed25519 public keys (32 raw bytes) and MAC keys."""

    require_signature: bool = False
    public_keys: dict[str, bytes] = field(default_factory=dict)
    mac_keys: dict[str, bytes] = field(default_factory=dict)
    source: str = ""


class _PolicyFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    require_signature: bool = False
    public_keys: list[str] = []
    hmac_keys: list[str] = []


def load_policy(repository: Path) -> Policy:
    """Read ``<repository>/registry.toml`` (no file: the permissive default policy)."""
    path = repository / POLICY
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Policy()
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: unreadable registry policy: {exc}") from exc
    try:
        spec = msgspec.convert(raw, type=_PolicyFile)
    except msgspec.ValidationError as exc:
        raise ModelLoadError(f"{path}: invalid registry policy: {exc}") from exc
    public: dict[str, bytes] = {}
    macs: dict[str, bytes] = {}
    try:
        for name in spec.public_keys:
            pub = load_public_key(repository / name)
            public[key_id("ed25519", pub)] = pub
        for name in spec.hmac_keys:
            mac = load_key(repository / name)
            macs[key_id("hmac-sha256", mac)] = mac
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read a key it names: {exc}") from exc
    except TailguardError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    if spec.require_signature and not public and not macs:
        raise ModelLoadError(f"{path}: require_signature is set but no public_keys or hmac_keys are listed")
    return Policy(spec.require_signature, public, macs, str(path))


def read_signature(directory: Path) -> Signature | None:
    """The version's ``manifest.sig``, or None when it has none."""
    path = directory / SIGNATURE
    try:
        return msgspec.json.decode(path.read_bytes(), type=Signature)
    except FileNotFoundError:
        return None
    except (msgspec.DecodeError, OSError) as exc:
        raise ModelSignatureError(f"{path}: unreadable signature file: {exc}") from exc


def sign_version(directory: Path, key: SigningKey, *, now: datetime.datetime | None = None) -> Signature:
    """Verify the version's files, then write ``manifest.sig`` over its canonical manifest
    (replacing an older signature atomically).  A corrupt version is refused, not signed."""
    m = read_manifest(directory)
    raw = (directory / MANIFEST).read_bytes()
    stamp = (now or datetime.datetime.now(datetime.UTC)).isoformat(timespec="seconds")
    sig = Signature(algorithm=key.algorithm, key_id=key.key_id,
                    signature=key.sign(canonical_bytes(raw)).hex(), content_hash=m.content_hash,
                    signed_at=stamp)
    tmp = directory / f".{SIGNATURE}.tmp"
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(sig)))
    os.replace(tmp, directory / SIGNATURE)
    return sig


@dataclass(frozen=True)
class SignatureStatus:
    """What ``check_version_signature`` found: whether the version carries a signature, with
    which key, and whether a key the policy knows verified it."""

    signed: bool
    verified: bool
    key_id: str = ""
    algorithm: str = ""


def _valid(sig: Signature, policy: Policy, message: bytes) -> bool | None:
    """True/False when a key the policy knows checks ``sig``, None when the key is unknown."""
    try:
        tag = bytes.fromhex(sig.signature)
    except ValueError:
        return False
    if sig.algorithm == "ed25519":
        pub = policy.public_keys.get(sig.key_id)
        return None if pub is None else check_signature(pub, tag, message)
    mac = policy.mac_keys.get(sig.key_id)
    if mac is None:
        return None
    return hmac.compare_digest(hmac.new(mac, message, hashlib.sha256).digest(), tag)


def check_version_signature(directory: Path, policy: Policy) -> SignatureStatus:
    """Check a version's signature against ``policy``; raises ``ModelSignatureError`` naming
    the problem when the policy refuses the version (see the module docstring)."""
    sig = read_signature(directory)
    label = f"{directory.parent.name}/{directory.name}"
    if sig is None:
        if policy.require_signature:
            raise ModelSignatureError(
                f"model {label}: unsigned ({SIGNATURE} missing) and {policy.source} requires a signature")
        return SignatureStatus(signed=False, verified=False)
    try:
        message = canonical_bytes((directory / MANIFEST).read_bytes())
    except OSError as exc:
        raise ModelLoadError(f"{directory}: cannot read {MANIFEST}: {exc.strerror}") from exc
    ok = _valid(sig, policy, message)
    if ok is None:
        if policy.require_signature:
            raise ModelSignatureError(
                f"model {label}: signed with key {sig.key_id} ({sig.algorithm}), "
                f"which {policy.source} does not list")
        return SignatureStatus(signed=True, verified=False, key_id=sig.key_id, algorithm=sig.algorithm)
    if not ok:
        raise ModelSignatureError(
            f"model {label}: bad signature (key {sig.key_id}, {sig.algorithm}): "
            "the manifest changed after signing or the signature is forged")
    return SignatureStatus(signed=True, verified=True, key_id=sig.key_id, algorithm=sig.algorithm)
