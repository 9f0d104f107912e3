"""Helpers of the registry tests: put a staged version into a service, write a policy."""

from __future__ import annotations

import shutil
from pathlib import Path


def add_version(service_dir: Path, source: Path, name: str = "primary", version: str = "2") -> Path:
    """Copy a staged version directory into the service's repository."""
    return Path(shutil.copytree(source, service_dir / "models" / name / version))


def write_policy(service_dir: Path, *, require: bool, public: Path | None = None,
                 mac: Path | None = None) -> None:
    """Write ``models/registry.toml`` naming the given key files (absolute paths)."""
    lines = [f"require_signature = {'true' if require else 'false'}"]
    if public is not None:
        lines.append(f'public_keys = ["{public}"]')
    if mac is not None:
        lines.append(f'hmac_keys = ["{mac}"]')
    (service_dir / "models" / "registry.toml").write_text("\n".join(lines) + "\n")
