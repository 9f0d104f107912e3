"""The drift reference: bins, shares and samples built from training rows, PSI and KS of a
window against them checked against a direct numpy computation (and scipy's ks_2samp),
save/load, and the errors a bad reference file gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tailguard.observe.reference import DriftReferenceError, Reference

EPS = 1e-4  # the documented clip of empty bin shares (docs/drift.md)
NAMES = ("v.normal", "v.discrete", "v.signed", "prediction.p")


def training(n: int = 5000, seed: int = 1) -> np.ndarray:
    """Rows of a continuous, a discrete (ties) and a signed feature (with -0.0 and NaN) and an output."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([
        rng.normal(10.0, 2.0, n),
        rng.integers(0, 4, n).astype(np.float64),
        rng.choice([-1.5, -0.0, 0.0, 2.5], n) * rng.uniform(0.5, 1.0, n).round(1),
        rng.beta(2.0, 5.0, n),
    ]).astype(np.float32)
    x[rng.random(n) < 0.05, 2] = np.nan
    return x


def numpy_psi(ref: Reference, j: int, values: np.ndarray, feature: bool) -> float:
    """PSI from first principles: bin = how many of the signal's edges are <= the value."""
    edges = ref.edges[ref.edge_offsets[j]:ref.edge_offsets[j + 1]]
    finite = values[~np.isnan(values)]
    counts = np.zeros(ref.bins + 1)
    counts[:len(edges) + 1] = np.bincount(np.searchsorted(edges, finite, side="right"),
                                          minlength=len(edges) + 1)
    if feature:
        counts[-1] = np.isnan(values).sum()
    p = counts / counts.sum()
    q = ref.proportions[j]
    return float(np.sum((p - q) * (np.log(np.maximum(p, EPS)) - np.log(np.maximum(q, EPS)))))


def numpy_ks(a: np.ndarray, b: np.ndarray) -> float:
    """sup |F_a - F_b| over every observed point (right-continuous empirical CDFs)."""
    a, b = np.sort(a[~np.isnan(a)]), np.sort(b[~np.isnan(b)])
    at = np.concatenate([a, b])
    fa = np.searchsorted(a, at, side="right") / len(a)
    fb = np.searchsorted(b, at, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


@pytest.fixture(scope="module")
def ref() -> Reference:
    return Reference.build(training(), NAMES, 3, bins=10, sample_size=512, meta={"model": "m/1"})


def test_edges_are_deduplicated_training_quantiles(ref: Reference) -> None:
    x = training()
    for j in range(len(NAMES)):
        col = x[:, j][~np.isnan(x[:, j])].astype(np.float64)
        q = np.quantile(col, np.linspace(0, 1, 11)[1:-1], method="inverted_cdf").astype(np.float32)
        assert np.array_equal(ref.edges[ref.edge_offsets[j]:ref.edge_offsets[j + 1]], np.unique(q))
    # The discrete feature keeps one edge per value (0..3): no two bins share a value.
    assert ref.edge_offsets[2] - ref.edge_offsets[1] == 4


def test_reference_shares_are_the_training_rows_own_bins(ref: Reference) -> None:
    x = training()
    for j in range(len(NAMES)):
        # The training data scored against its own reference has PSI 0: same shares, bin for bin.
        assert numpy_psi(ref, j, x[:, j], j < 3) == pytest.approx(0.0, abs=1e-12)
    assert ref.proportions[2, -1] == pytest.approx(np.isnan(x[:, 2]).mean())
    assert ref.proportions[3, -1] == 0.0  # outputs have no missing-value bin
    assert np.allclose(ref.proportions.sum(axis=1), 1.0)


def test_psi_and_ks_match_numpy_on_a_shifted_window(ref: Reference) -> None:
    rng = np.random.default_rng(5)
    w = training(700, seed=9)
    w[:, 0] += 1.0  # mean shift
    w[:, 1] = rng.choice([0.0, 3.0, 7.0], 700)  # a new value beyond the last edge
    w[rng.random(700) < 0.3, 2] = np.nan  # more missing values
    psi, ks = ref.scores(w)
    for j in range(len(NAMES)):
        assert psi[j] == pytest.approx(numpy_psi(ref, j, w[:, j], j < 3), rel=1e-9, abs=1e-12)
        assert ks[j] == pytest.approx(numpy_ks(w[:, j], ref.signal_sample(j)), abs=1e-12)
    assert psi[0] > 0.25 and ks[0] > 0.15  # a one-sd shift is well over the default alert thresholds


def test_ks_equals_scipy_two_sample_statistic(ref: Reference) -> None:
    stats = pytest.importorskip("scipy.stats")
    w = training(300, seed=11)
    w[:, 3] *= 1.2
    _, ks = ref.scores(w)
    for j in range(len(NAMES)):
        col = w[:, j][~np.isnan(w[:, j])]
        assert ks[j] == pytest.approx(stats.ks_2samp(col, ref.signal_sample(j)).statistic, abs=1e-12)


def test_a_window_from_the_training_distribution_scores_low(ref: Reference) -> None:
    psi, ks = ref.scores(training(2000, seed=21))
    assert np.all(psi < 0.05) and np.all(ks < 0.06)


def test_scoring_a_range_of_signals_equals_scoring_all(ref: Reference) -> None:
    w = training(400, seed=3)
    psi, ks = ref.scores(w)
    for lo, hi in ((0, 1), (1, 3), (3, 4), (0, 4)):
        p, k = ref.scores(w, lo, hi)
        assert np.array_equal(p, psi[lo:hi]) and np.array_equal(k, ks[lo:hi])


def test_a_signal_without_values_scores_nan_for_ks(ref: Reference) -> None:
    w = training(100, seed=4)
    w[:, 2] = np.nan
    w[:, 3] = np.nan
    psi, ks = ref.scores(w)
    assert np.isnan(ks[2]) and np.isnan(ks[3])
    assert np.isnan(psi[3])  # an output with no answer in the window: nothing to compare
    # A feature that is missing everywhere is all in its missing-value bin: that is drift.
    assert psi[2] == pytest.approx(numpy_psi(ref, 2, w[:, 2], True))
    assert psi[2] > 1.0


VALUES = st.one_of(st.floats(-1e6, 1e6, width=32), st.sampled_from([0.0, -0.0, 1.0, float("nan")]))


@given(
    hnp.arrays(np.float32, st.tuples(st.integers(20, 200), st.just(2)), elements=VALUES),
    hnp.arrays(np.float32, st.tuples(st.integers(1, 60), st.just(2)), elements=VALUES),
)
def test_scores_match_numpy_on_arbitrary_data(train: np.ndarray, window: np.ndarray) -> None:
    train[0] = 1.0  # every signal has a finite reference value
    r = Reference.build(train, ("a.x", "prediction.y"), 1, bins=5, sample_size=16)
    psi, ks = r.scores(window)
    for j in range(2):
        if np.isnan(window[:, j]).all():
            assert np.isnan(ks[j])
            continue
        assert psi[j] == pytest.approx(numpy_psi(r, j, window[:, j], j < 1), rel=1e-9, abs=1e-12)
        assert ks[j] == pytest.approx(numpy_ks(window[:, j], r.signal_sample(j)), abs=1e-12)


def test_sample_is_a_sorted_quantile_sketch(ref: Reference) -> None:
    x = training()
    for j in range(len(NAMES)):
        s = ref.signal_sample(j)
        assert len(s) == 512 and np.all(np.diff(s) >= 0)
        col = np.sort(x[:, j][~np.isnan(x[:, j])])
        assert s[0] >= col[0] and s[-1] <= col[-1]
    assert ref.mean[0] == pytest.approx(x[:, 0].mean(), rel=1e-6)
    assert ref.std[3] == pytest.approx(x[:, 3].std(), rel=1e-4)


def test_save_and_load_round_trip(ref: Reference, tmp_path: Path) -> None:
    path = ref.save(tmp_path / "deep" / "ref.npz")
    back = Reference.load(path)
    assert back.names == ref.names and back.n_features == 3 and back.outputs == ("p",)
    assert back.meta["model"] == "m/1" and back.meta["rows"] == 5000
    w = training(300, seed=8)
    assert np.array_equal(np.asarray(back.scores(w)), np.asarray(ref.scores(w)))
    assert not list(tmp_path.glob("deep/.*"))  # no temporary file left behind


def test_loading_a_missing_reference_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(DriftReferenceError, match="tailguard drift reference"):
        Reference.load(tmp_path / "nope.npz")


def test_loading_garbage_is_a_reference_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(DriftReferenceError, match="not a drift reference"):
        Reference.load(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, names=np.array(["a"]))
    with pytest.raises(DriftReferenceError, match="not a drift reference"):
        Reference.load(partial)


def test_loading_another_format_version_is_refused(ref: Reference, tmp_path: Path) -> None:
    path = ref.save(tmp_path / "r.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array(str(arrays["meta"]).replace('"format": 1', '"format": 99'))
    np.savez(path, **arrays)
    with pytest.raises(DriftReferenceError, match="format 99"):
        Reference.load(path)


@pytest.mark.parametrize(("shape", "bins", "sample"), [((0, 2), 10, 64), ((10, 3), 10, 64),
                                                        ((10, 2), 1, 64), ((10, 2), 10, 8)])
def test_build_rejects_bad_input(shape: tuple[int, int], bins: int, sample: int) -> None:
    with pytest.raises(DriftReferenceError):
        Reference.build(np.zeros(shape, np.float32), ("a.x", "prediction.y"), 1, bins=bins,
                        sample_size=sample)
