"""The ``tailguard models`` commands (registered by ``tailguard.cli``).

    tailguard models list SERVICE_DIR [--json]                 every model and version
    tailguard models show SERVICE_DIR MODEL [VERSION] [--json]  one manifest in full
    tailguard models verify SERVICE_DIR [MODEL [VERSION]] [--json]
    tailguard models sign SERVICE_DIR MODEL VERSION --key KEYFILE

``list`` prints, per version, the short content hash, creation time, signature (the key id,
``verified`` when ``registry.toml`` knows the key, ``BAD`` when it fails), offline metrics and
``*`` on the version the spec's version policy selects.  ``show`` defaults to that version.
``verify`` checks what loading would (hashes, signature policy, feature versions against the
service's live views) and exits 1 naming each problem with its code.  ``sign`` writes
``manifest.sig`` with an Ed25519 PEM key or a MAC key (``tailguard audit keygen``).
Service errors (no such model, unreadable spec) exit 2 through ``tailguard.cli``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgspec

from tailguard.errors import ModelNotFound, TailguardError
from tailguard.registry.catalog import VersionEntry, catalog, verify
from tailguard.registry.sign import check_version_signature, load_policy, load_signing_key, sign_version

__all__ = ["register_models"]


def register_models(sub: Any) -> None:
    """Add ``models`` and its subcommands to the top-level ``tailguard`` subparsers ``sub``."""
    mo = sub.add_parser("models", help="the model registry: list, show, verify and sign versions")
    msub = mo.add_subparsers(dest="models_command", required=True)
    ls = msub.add_parser("list", help="every model and version, with hash, signature, metrics, selection")
    ls.add_argument("service_dir")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=_list)
    sh = msub.add_parser("show", help="one version's full manifest (default: the selected version)")
    sh.add_argument("service_dir")
    sh.add_argument("model")
    sh.add_argument("version", nargs="?")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(fn=_show)
    ve = msub.add_parser("verify", help="hashes, signature and feature versions; exit 1 naming problems")
    ve.add_argument("service_dir")
    ve.add_argument("model", nargs="?")
    ve.add_argument("version", nargs="?")
    ve.add_argument("--json", action="store_true")
    ve.set_defaults(fn=_verify)
    sg = msub.add_parser("sign", help="write manifest.sig for a version (verifies its files first)")
    sg.add_argument("service_dir")
    sg.add_argument("model")
    sg.add_argument("version")
    sg.add_argument("--key", required=True, metavar="KEYFILE",
                    help="Ed25519 private key (PEM) or MAC key (tailguard audit keygen)")
    sg.set_defaults(fn=_sign)


def _signature_state(e: VersionEntry) -> str:
    if e.signature is None:
        return "no"
    try:
        st = check_version_signature(e.directory, load_policy(e.directory.parent.parent))
    except TailguardError:
        return f"BAD ({e.signature.key_id})"
    return f"{st.key_id} verified" if st.verified else f"{st.key_id} unknown key"


def _row(e: VersionEntry) -> dict[str, Any]:
    m = e.manifest
    return {
        "model": e.model,
        "version": e.version,
        "selected": e.selected,
        "content_hash": m.content_hash if m else "",
        "created_at": m.created_at if m else "",
        "signature": _signature_state(e),
        "metrics": dict(m.metrics) if m else {},
        "error": e.error,
    }


def _list(args: argparse.Namespace) -> int:
    rows = [_row(e) for e in catalog(args.service_dir)]
    if args.json:
        print(json.dumps(rows))
        return 0
    header = ("", "MODEL", "VERSION", "HASH", "CREATED", "SIGNED", "METRICS")
    table = [header]
    for r in rows:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(r["metrics"].items())) or "-"
        if r["error"]:
            metrics = f"unreadable: {r['error']}"
        table.append(("*" if r["selected"] else "", r["model"], r["version"], r["content_hash"][:12] or "-",
                      r["created_at"] or "-", r["signature"], metrics))
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    print("(* = the version the spec's version policy selects)")
    return 0


def _show(args: argparse.Namespace) -> int:
    entries = catalog(args.service_dir, args.model)
    if not entries:
        raise ModelNotFound(f"no versions of model {args.model!r} (or the service does not declare it)")
    if args.version is None:
        chosen = [e for e in entries if e.selected] or entries[-1:]
    else:
        chosen = [e for e in entries if e.version == args.version]
        if not chosen:
            raise ModelNotFound(f"model {args.model!r} has no version {args.version!r}; "
                                f"versions: {[e.version for e in entries]}")
    e = chosen[0]
    if e.manifest is None:
        raise ModelNotFound(f"{e.label}: {e.error}")
    doc = {
        "manifest": msgspec.to_builtins(e.manifest),
        "signature": msgspec.to_builtins(e.signature) if e.signature is not None else None,
        "signature_state": _signature_state(e),
        "selected": e.selected,
        "directory": str(e.directory),
    }
    if args.json:
        print(json.dumps(doc))
        return 0
    m = doc["manifest"]
    print(f"{e.label}{'  (selected)' if e.selected else ''}  {e.directory}")
    for key, value in m.items():
        if key in ("name", "version"):
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        print(f"  {key}: {text}")
    print(f"  signature: {_signature_state(e)}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    if args.version is not None and args.model is None:
        raise ModelNotFound("give a MODEL with a VERSION")
    results = verify(Path(args.service_dir), args.model, args.version)
    bad = sum(1 for _, problems in results if problems)
    if args.json:
        print(json.dumps({
            "ok": bad == 0,
            "versions": [{"model": e.model, "version": e.version, "selected": e.selected,
                          "problems": [{"code": p.code, "message": p.message} for p in problems]}
                         for e, problems in results],
        }))
        return 1 if bad else 0
    for e, problems in results:
        if not problems:
            print(f"ok    {e.label}")
        for p in problems:
            print(f"FAIL  {e.label}  [{p.code}] {p.message}")
    print(f"{len(results)} version(s) checked, {bad} refused")
    return 1 if bad else 0


def _sign(args: argparse.Namespace) -> int:
    entries = [e for e in catalog(args.service_dir, args.model) if e.version == args.version]
    if not entries:
        raise ModelNotFound(f"model {args.model!r} has no version {args.version!r}")
    sig = sign_version(entries[0].directory, load_signing_key(args.key))
    print(f"signed {entries[0].label} ({sig.algorithm}, key {sig.key_id}, "
          f"content hash {sig.content_hash[:12]})")
    return 0
