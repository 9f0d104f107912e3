"""What can be wrong with an audit log, each with a stable code, and the audit errors.

``verify`` never raises for a bad log: it returns a report whose ``problem`` names the first
bad position, the reason and a ``Code``.  Callers that must not go on with a bad log
(``replay``, continuing a log, ``retain``) raise ``AuditInvalid``, whose ``code`` is the
problem's.  The codes are part of the public contract (CLI output, JSON reports)::

    TailguardError
    └── AuditError          "audit_invalid"    (or a more precise code, below)
        └── AuditInvalid    the problem's code: the log does not verify

Codes: see ``Code``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tailguard.errors import TailguardError

__all__ = ["AuditError", "AuditInvalid", "Code", "Problem"]


class Code(enum.StrEnum):
    """Why an audit log does not verify (or an audit operation failed)."""

    NO_SEGMENTS = "audit_no_segments"  # nothing to verify in the directory
    WRONG_KEY = "audit_wrong_key"  # the log names another MAC key (key id) than the one given
    MAC_MISMATCH = "audit_mac_mismatch"  # an entry modified, inserted, deleted or reordered
    CORRUPT = "audit_corrupt"  # an entry that does not decode, or a bad file name
    TRUNCATED = "audit_truncated"  # a closed segment cut short, or one never closed
    FOREIGN = "audit_foreign_segment"  # a segment of another service or another log
    SEQUENCE = "audit_sequence"  # segment numbers or record sequence numbers not consecutive
    STRUCTURE = "audit_structure"  # header not first, entry after closing, wrong counts
    CHECKPOINT = "audit_checkpoint_mismatch"  # a checkpoint's chain MAC or digest is wrong
    VERSION = "audit_version"  # not a tailguard audit segment of a version this code reads
    WRONG_PUBLIC_KEY = "audit_wrong_public_key"  # signed by a key that was not given
    BAD_SIGNATURE = "audit_bad_signature"  # a signature that does not verify (forged)
    UNSIGNED = "audit_unsigned"  # a signature was required and is missing
    ANCHOR_MISSING = "audit_anchor_missing"  # segments removed without a retention anchor
    ANCHOR_INVALID = "audit_anchor_invalid"  # an anchor forged, corrupt or not matching
    NO_KEY = "audit_no_key"  # neither a MAC key nor a public key to verify with
    SIGNING_UNAVAILABLE = "audit_signing_unavailable"  # the `cryptography` package is missing
    UNKNOWN_SUBJECT = "audit_unknown_subject"  # erase: no key stored for that subject
    PII_KEYS_MISSING = "audit_pii_keys_missing"  # the spec hashes PII but no subject keys given


@dataclass(frozen=True)
class Problem:
    """Where verification failed: segment file, entry index in it, byte offset, reason, code."""

    segment: str
    entry: int
    offset: int
    reason: str
    code: Code = Code.MAC_MISMATCH

    def __str__(self) -> str:
        return f"{self.segment}: entry {self.entry} at byte {self.offset}: {self.reason}"


class AuditError(TailguardError):
    """An audit operation cannot go on (bad key file, a log that cannot be continued...)."""

    code: str = "audit_invalid"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = str(code)


class AuditInvalid(AuditError):
    """The audit log does not verify; ``problem`` says where and why (``code`` is its code)."""

    def __init__(self, message: str, problem: Problem) -> None:
        super().__init__(f"{message}: {problem}", problem.code)
        self.problem = problem
