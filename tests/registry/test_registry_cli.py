"""``tailguard models list|show|verify|sign``: outputs and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from registrykit import add_version, write_policy

from tailguard.cli import main

Capture = pytest.CaptureFixture[str]


@pytest.fixture
def svc(toy_copy: Path, primary_v2: Path) -> Path:
    add_version(toy_copy, primary_v2)
    return toy_copy


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_shows_every_version_and_the_selected_one(svc: Path, capsys: Capture) -> None:
    rc, out, _ = run(capsys, "models", "list", str(svc), "--json")
    rows = {(r["model"], r["version"]): r for r in json.loads(out)}
    assert rc == 0
    assert set(rows) == {("primary", "1"), ("primary", "2"), ("fast", "1")}
    assert [k for k, r in rows.items() if r["selected"]] == [("primary", "2"), ("fast", "1")]
    assert rows[("primary", "2")]["metrics"] == {"auc": 0.71, "logloss": 0.62}
    assert rows[("primary", "2")]["signature"] == "no"


def test_list_table_marks_selection_and_short_hash(svc: Path, capsys: Capture) -> None:
    rc, out, _ = run(capsys, "models", "list", str(svc))
    h = msgspec.json.decode((svc / "models" / "primary" / "2" / "manifest.json").read_bytes())["content_hash"]
    line = next(ln for ln in out.splitlines() if " primary " in ln and f" {h[:12]} " in ln)
    assert rc == 0
    assert line.startswith("*") and "auc=0.71" in line


def test_show_defaults_to_the_selected_version(svc: Path, capsys: Capture) -> None:
    rc, out, _ = run(capsys, "models", "show", str(svc), "primary", "--json")
    doc = json.loads(out)
    assert rc == 0
    assert (doc["manifest"]["version"], doc["selected"]) == ("2", True)
    assert doc["manifest"]["training_data"]["uri"] == "s3://bucket/toy/train.parquet"


def test_show_names_an_explicit_version(svc: Path, capsys: Capture) -> None:
    rc, out, _ = run(capsys, "models", "show", str(svc), "primary", "1")
    assert rc == 0
    assert out.splitlines()[0].startswith("primary/1 ")
    assert "feature_versions:" in out


def test_show_unknown_version_exits_2_with_code(svc: Path, capsys: Capture) -> None:
    rc, _, err = run(capsys, "models", "show", str(svc), "primary", "7")
    assert rc == 2
    assert "[model_not_found]" in err


def test_verify_passes_a_clean_repository(svc: Path, capsys: Capture) -> None:
    rc, out, _ = run(capsys, "models", "verify", str(svc))
    assert rc == 0
    assert "3 version(s) checked, 0 refused" in out


def test_verify_exits_1_naming_a_corrupt_artifact(svc: Path, capsys: Capture) -> None:
    (svc / "models" / "primary" / "2" / "model.onnx").write_bytes(b"garbage")
    rc, out, _ = run(capsys, "models", "verify", str(svc), "primary")
    assert rc == 1
    assert "FAIL  primary/2  [model_load_failed]" in out and "model.onnx" in out
    assert "ok    primary/1" in out


def test_verify_names_a_feature_version_mismatch(svc: Path, capsys: Capture) -> None:
    # A changed transform module changes the live view versions; the models pin the old ones.
    mod = svc / "toyfeatures.py"
    mod.write_text(mod.read_text() + "\n# changed\n")
    rc, out, _ = run(capsys, "models", "verify", str(svc), "primary", "2", "--json")
    doc = json.loads(out)
    assert rc == 1
    assert doc["ok"] is False
    assert [p["code"] for p in doc["versions"][0]["problems"]] == ["feature_version_mismatch"]


def test_verify_requires_signatures_per_policy(svc: Path, mac_key: Path, capsys: Capture) -> None:
    write_policy(svc, require=True, mac=mac_key)
    rc, out, _ = run(capsys, "models", "verify", str(svc), "primary", "2")
    assert rc == 1
    assert "[model_signature_invalid]" in out and "unsigned" in out


def test_sign_then_verify_and_list(svc: Path, ed_key: tuple[Path, Path], capsys: Capture) -> None:
    key, pub = ed_key
    rc, out, _ = run(capsys, "models", "sign", str(svc), "primary", "2", "--key", str(key))
    assert rc == 0 and out.startswith("signed primary/2 (ed25519, key ")
    write_policy(svc, require=False, public=pub)
    assert run(capsys, "models", "verify", str(svc), "primary", "2")[0] == 0
    rc, out, _ = run(capsys, "models", "list", str(svc), "--json")
    states = {(r["model"], r["version"]): r["signature"] for r in json.loads(out)}
    assert states[("primary", "2")].endswith(" verified")
    assert states[("primary", "1")] == "no"


def test_sign_with_a_bad_key_file_exits_2(svc: Path, tmp_path: Path, capsys: Capture) -> None:
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"x")
    rc, _, err = run(capsys, "models", "sign", str(svc), "primary", "2", "--key", str(bad))
    assert rc == 2
    assert "[model_signature_invalid]" in err


def test_verify_unknown_model_exits_2(svc: Path, capsys: Capture) -> None:
    rc, _, err = run(capsys, "models", "verify", str(svc), "nope")
    assert rc == 2
    assert "[model_not_found]" in err
