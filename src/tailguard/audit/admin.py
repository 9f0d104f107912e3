"""Key, retention and erasure commands of ``tailguard audit`` (registered by ``tailguard.cli``).

    tailguard audit keygen PATH [--ed25519]        MAC key, or an Ed25519 pair (PATH, PATH.pub)
    tailguard audit retain DIR --key-file K [--keep-days N] [--keep-segments N]
                           [--signing-key SK] [--service NAME] [--json]
    tailguard audit erase KEY --entity E --subject-keys DIR [--int]

``retain`` refuses a log that does not verify, and ``erase`` a subject with no stored key:
exit 2 with the error's code.  ``open_log`` is how ``tailguard serve`` opens a worker's log
from key files and options.  Runs on the main thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tailguard.audit.log import AuditLog
    from tailguard.service import Service

__all__ = ["keygen", "open_log", "print_report", "public_keys", "register"]


def open_log(service: Service, directory: str | Path, key_file: str, *, signing_key_file: str | None = None,
             subject_keys_dir: str | None = None, keep_days: float | None = None,
             keep_segments: int | None = None, **options: Any) -> AuditLog:
    """The audit log of ``service`` in ``directory``: MAC key, optional Ed25519 signing key and
    subject key directory read from their files, retention from ``keep_*``; ``options`` go
    to ``AuditLog`` (``fsync_interval_s``, ``segment_bytes``...)."""
    from tailguard.audit.keys import load_key, load_signer
    from tailguard.audit.log import AuditLog
    from tailguard.audit.pii import SubjectKeys
    from tailguard.audit.retention import Retention

    return AuditLog.for_service(
        service, directory, load_key(key_file),
        signer=load_signer(signing_key_file) if signing_key_file else None,
        subject_keys=SubjectKeys(subject_keys_dir) if subject_keys_dir else None,
        retention=Retention(keep_days, keep_segments), **options)


def register(asub: Any) -> None:
    """Add ``retain`` and ``erase`` to the ``tailguard audit`` subparsers ``asub``."""
    r = asub.add_parser("retain", help="remove old segments behind a retention anchor (the rest verifies)")
    r.add_argument("directory")
    r.add_argument("--key-file", required=True)
    r.add_argument("--keep-days", type=float, help="keep segments closed less than this many days ago")
    r.add_argument("--keep-segments", type=int, help="keep at least the newest N segments")
    r.add_argument("--signing-key", help="the log's Ed25519 private key (required when the log is signed)")
    r.add_argument("--service", help="the service name the log must belong to")
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=_retain)
    e = asub.add_parser("erase", help="destroy one subject's PII key: its records can no longer be linked")
    e.add_argument("key", help="the entity key (the subject) as the service receives it")
    e.add_argument("--entity", required=True, help="the entity the key belongs to")
    e.add_argument("--subject-keys", required=True, help="the subject key directory of the writer")
    e.add_argument("--int", action="store_true", help="the entity's keys are int64")
    e.set_defaults(fn=_erase)


def keygen(args: argparse.Namespace) -> int:
    """``tailguard audit keygen PATH [--ed25519]``."""
    from tailguard.audit.keys import new_key, new_signing_key

    if getattr(args, "ed25519", False):
        pub = new_signing_key(args.path)
        print(f"wrote an Ed25519 signing key to {args.path} (mode 0600) and its public key to {pub}")
    else:
        new_key(args.path)
        print(f"wrote a new 32-byte audit key to {args.path} (mode 0600)")
    return 0


def public_keys(args: argparse.Namespace) -> list[bytes]:
    """The raw public keys named by ``--public-key`` (repeatable)."""
    from tailguard.audit.keys import load_public_key

    return [load_public_key(p) for p in getattr(args, "public_key", None) or ()]


def _retain(args: argparse.Namespace) -> int:
    from tailguard.audit.keys import load_key, load_signer
    from tailguard.audit.retention import Retention, retain
    from tailguard.errors import SpecError

    policy = Retention(args.keep_days, args.keep_segments)
    if not policy.active:
        raise SpecError("audit retain needs --keep-days and/or --keep-segments")
    signer = load_signer(args.signing_key) if args.signing_key else None
    key = load_key(args.key_file)
    out = retain(args.directory, key, policy, signer=signer, service=args.service).as_dict()
    print_report(out, args.json)
    return 0


def _erase(args: argparse.Namespace) -> int:
    from tailguard.audit.pii import SubjectKeys
    from tailguard.audit.problems import AuditError, Code
    from tailguard.errors import SpecError

    try:
        subject: Any = int(args.key) if args.int else args.key
    except ValueError:
        raise SpecError(f"--int: {args.key!r} is not an integer") from None
    if not SubjectKeys(args.subject_keys).erase(args.entity, subject):
        raise AuditError(f"no key stored for {args.entity} {subject!r} (never logged, or already erased)",
                         Code.UNKNOWN_SUBJECT)
    print(f"erased the key of {args.entity} {subject!r}: its audit records can no longer be linked to it")
    return 0


def print_report(out: dict[str, Any], as_json: bool) -> None:
    """A command's result: one JSON object, or ``key: value`` lines."""
    if as_json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k}: {v}")
