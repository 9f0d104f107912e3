"""``tailguard optimize``: table, JSON, exit codes and messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tailguard.cli import main
from tailguard.models.repository import list_versions

Capture = pytest.CaptureFixture[str]
QUICK = ("--reps", "10", "--blocks", "1", "--prune", "1", "--no-distill")


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_prints_a_table_of_every_candidate(svc: Path, valid_npz: Path, capsys: Capture) -> None:
    rc, out, _ = run(capsys, "optimize", str(svc), "primary", "--data", str(valid_npz), *QUICK)
    assert rc == 0
    assert out.splitlines()[0].startswith("primary/1 (")
    for name in ("baseline", "ort-optimized", "int8-static", "prune-1"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), name


def test_json_is_one_object_on_the_last_line(svc: Path, valid_npz: Path, capsys: Capture) -> None:
    rc, out, _ = run(capsys, "optimize", str(svc), "primary", "--data", str(valid_npz), "--json", *QUICK)
    assert rc == 0
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["model"] == "primary" and doc["metric"] == "auc" and doc["max_loss"] == 0.005
    by_name = {c["name"]: c for c in doc["candidates"]}
    assert by_name["baseline"]["status"] == "baseline"
    assert set(by_name["baseline"]["latency_us"]) == {"1", "64"}
    assert by_name["int8-dynamic"]["status"] == "skipped"


def test_writing_a_refused_candidate_exits_1_and_writes_nothing(
    svc: Path, valid_npz: Path, capsys: Capture
) -> None:
    rc, _, err = run(capsys, "optimize", str(svc), "primary", "--data", str(valid_npz),
                     "--max-loss", "0", "--write", "prune-1", *QUICK)
    assert rc == 1
    assert "prune-1" in err and "refused" in err
    assert list_versions(svc / "models", "primary") == ["1"]


def test_writing_an_unknown_candidate_exits_1(svc: Path, valid_npz: Path, capsys: Capture) -> None:
    rc, _, err = run(capsys, "optimize", str(svc), "primary", "--data", str(valid_npz),
                     "--write", "nope", *QUICK)
    assert rc == 1 and "no candidate named 'nope'" in err


def test_write_then_models_verify_passes(toy_dir: Path, tmp_path: Path, valid_npz: Path,
                                         capsys: Capture) -> None:
    svc = Path(shutil.copytree(toy_dir, tmp_path / "svc"))
    rc, out, _ = run(capsys, "optimize", str(svc), "primary", "--data", str(valid_npz),
                     "--max-loss", "1", "--write", "prune-1", *QUICK)
    assert rc == 0 and "wrote primary/2 (prune-1)" in out
    rc, out, _ = run(capsys, "models", "verify", str(svc), "primary", "2")
    assert rc == 0 and "ok    primary/2" in out


def test_a_missing_validation_file_exits_2(svc: Path, tmp_path: Path, capsys: Capture) -> None:
    rc, _, err = run(capsys, "optimize", str(svc), "primary", "--data", str(tmp_path / "none.npz"))
    assert rc == 2 and "[optimize_failed]" in err and "no such validation file" in err


def test_an_unknown_model_exits_2(svc: Path, valid_npz: Path, capsys: Capture) -> None:
    rc, _, err = run(capsys, "optimize", str(svc), "nope", "--data", str(valid_npz))
    assert rc == 2 and "[model_not_found]" in err


def test_bad_thresholds_and_tree_counts_are_usage_errors(svc: Path, valid_npz: Path) -> None:
    for bad in (("--max-loss", "-1"), ("--prune", "0"), ("--prune", "a,b")):
        with pytest.raises(SystemExit) as exc:
            main(["optimize", str(svc), "primary", "--data", str(valid_npz), *bad])
        assert exc.value.code == 2


def test_where_signatures_are_required_the_new_version_is_written_unsigned_and_says_so(
    toy_dir: Path, tmp_path: Path, valid_npz: Path, capsys: Capture
) -> None:
    svc = Path(shutil.copytree(toy_dir, tmp_path / "svc"))
    key = tmp_path / "registry.key"
    assert run(capsys, "audit", "keygen", str(key))[0] == 0
    assert run(capsys, "models", "sign", str(svc), "primary", "1", "--key", str(key))[0] == 0
    (svc / "models" / "registry.toml").write_text(f'require_signature = true\nhmac_keys = ["{key}"]\n')
    rc, out, _ = run(capsys, "optimize", str(svc), "primary", "--data", str(valid_npz),
                     "--max-loss", "1", "--write", "prune-1", *QUICK)
    assert rc == 0 and "unsigned: sign it" in out
    assert run(capsys, "models", "verify", str(svc), "primary", "2")[0] == 1
    assert run(capsys, "models", "sign", str(svc), "primary", "2", "--key", str(key))[0] == 0
    assert run(capsys, "models", "verify", str(svc), "primary", "2")[0] == 0
