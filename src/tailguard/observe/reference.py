"""The drift monitor's training reference, and the scores of a window against it.

A *signal* is one column the monitor watches: each feature column of the engine's wide
vector (``view.field``), then each model output as ``prediction.<output>``.  Per signal the
reference keeps

* quantile bin edges (``bins`` bins at most, deduplicated, so a discrete feature gets one bin
  per value) and the reference share of each bin, plus a last bin for missing values (NaN;
  features only) — what PSI compares;
* a compact sorted quantile sample (``sample_size`` points, the values themselves when there
  are fewer) — the reference side of the two-sample Kolmogorov-Smirnov statistic;
* the mean and standard deviation of its finite values (detectors read standardised values).

``Reference.scores`` scores a window of rows against every signal at once: each float32
value is mapped to an order-preserving unsigned key and prefixed with its signal number, so
one ``np.searchsorted`` over all signals' edges bins every value, and one sort plus two
searches give every signal's KS statistic (exact: it equals ``scipy.stats.ks_2samp`` against
the sample).  Saved as one ``.npz`` file (no pickles) with its provenance as JSON.

Owner: none (immutable once built); ``scores`` allocates only temporaries on the caller's
thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.errors import TailguardError

__all__ = ["PREDICTION", "DriftError", "DriftReferenceError", "Reference", "order_keys"]

#: Prefix of the signals that watch model outputs (``prediction.p_up``).
PREDICTION = "prediction."
FORMAT = 1
_EPS = 1e-4  # bin shares are clipped here before the log: an empty bin is not infinitely far
_ARRAYS = ("names", "edges", "edge_offsets", "proportions", "sample", "sample_offsets", "mean", "std")


class DriftError(TailguardError):
    """The drift monitor cannot be built as configured (a missing package, an unknown output)."""

    code = "drift_error"


class DriftReferenceError(DriftError):
    """A drift reference is missing, malformed, or does not fit the service it is used with."""

    code = "drift_reference_invalid"


def order_keys(values: np.ndarray) -> np.ndarray:
    """float32 values -> uint32 keys in the same order (-0.0 counts as 0.0; callers drop NaN)."""
    u = (np.asarray(values, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    return np.where(u & np.uint32(0x80000000), ~u, u | np.uint32(0x80000000))


def _keyed(signal: np.ndarray, values: np.ndarray) -> np.ndarray:
    return (signal.astype(np.uint64) << np.uint64(32)) | order_keys(values).astype(np.uint64)


@dataclass(frozen=True, eq=False)
class Reference:
    """Per-signal bins, shares and samples (flat, signal-major arrays with offsets)."""

    names: tuple[str, ...]
    n_features: int
    edges: np.ndarray  # float32, every signal's edges one after the other
    edge_offsets: np.ndarray  # int64 (S + 1,)
    proportions: np.ndarray  # float64 (S, bins + 1): value bins, then the NaN bin
    sample: np.ndarray  # float32, every signal's sorted sample one after the other
    sample_offsets: np.ndarray  # int64 (S + 1,)
    mean: np.ndarray  # float64 (S,)
    std: np.ndarray  # float64 (S,)
    meta: dict[str, Any] = field(default_factory=dict)
    _ekeys: np.ndarray = field(init=False, repr=False)
    _rkeys: np.ndarray = field(init=False, repr=False)
    _rsig: np.ndarray = field(init=False, repr=False)
    _rend: np.ndarray = field(init=False, repr=False)
    _esig: np.ndarray = field(init=False, repr=False)
    _logref: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        s = len(self.names)
        if (self.edge_offsets.shape != (s + 1,) or self.sample_offsets.shape != (s + 1,)
                or self.proportions.shape[0] != s or self.mean.shape != (s,) or self.std.shape != (s,)
                or self.edge_offsets[-1] != len(self.edges) or self.sample_offsets[-1] != len(self.sample)
                or not 0 <= self.n_features <= s):
            raise DriftReferenceError("inconsistent drift reference arrays")
        sig = np.arange(s)
        # Keys made once: every scoring searches these.
        esig = np.repeat(sig, np.diff(self.edge_offsets))
        rsig = np.repeat(sig, np.diff(self.sample_offsets))
        rkeys = _keyed(rsig, self.sample)
        object.__setattr__(self, "_esig", esig)
        object.__setattr__(self, "_ekeys", _keyed(esig, self.edges))
        object.__setattr__(self, "_rsig", rsig)
        object.__setattr__(self, "_rkeys", rkeys)
        # The last index of every run of equal sample keys (runs never cross signals).
        last = np.concatenate((rkeys[1:] != rkeys[:-1], [True])) if len(rkeys) else np.zeros(0, bool)
        object.__setattr__(self, "_rend", np.flatnonzero(last))
        object.__setattr__(self, "_logref", np.log(np.maximum(self.proportions, _EPS)))

    @property
    def bins(self) -> int:
        """Most value bins a signal may have (the NaN bin not counted)."""
        return int(self.proportions.shape[1]) - 1

    @property
    def outputs(self) -> tuple[str, ...]:
        """The model outputs the reference covers (without the ``prediction.`` prefix)."""
        return tuple(n[len(PREDICTION):] for n in self.names[self.n_features:])

    def signal_sample(self, i: int) -> np.ndarray:
        """Signal ``i``'s sorted reference sample (float32)."""
        return self.sample[self.sample_offsets[i]:self.sample_offsets[i + 1]]

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def build(cls, values: np.ndarray, names: tuple[str, ...], n_features: int, *, bins: int = 10,
              sample_size: int = 1024, meta: dict[str, Any] | None = None) -> Reference:
        """The reference of ``values`` (rows x signals; NaN = missing); the first ``n_features``
        signals are features (their NaN share is a bin), the rest model outputs."""
        x = np.asarray(values, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(names) or x.shape[0] == 0:
            raise DriftReferenceError(f"reference data must be (rows, {len(names)}) with rows > 0")
        if not 2 <= bins <= 1000 or sample_size < 16:
            raise DriftReferenceError("a reference needs 2..1000 bins and a sample of 16 points or more")
        edges, samples, mean, std = [], [], np.zeros(len(names)), np.zeros(len(names))
        for j in range(len(names)):
            col = x[:, j]
            finite = col[~np.isnan(col)].astype(np.float64)
            if len(finite) == 0:
                edges.append(np.zeros(0, np.float32))
                samples.append(np.zeros(0, np.float32))
                mean[j] = std[j] = np.nan
                continue
            q = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="inverted_cdf")
            edges.append(np.unique(q.astype(np.float32)))
            if len(finite) <= sample_size:
                samples.append(np.sort(finite).astype(np.float32))
            else:
                at = (np.arange(sample_size) + 0.5) / sample_size
                samples.append(np.quantile(finite, at, method="inverted_cdf").astype(np.float32))
            mean[j], std[j] = float(finite.mean()), float(finite.std())
        flat_edges = np.concatenate(edges) if edges else np.zeros(0, np.float32)
        flat_sample = np.concatenate(samples) if samples else np.zeros(0, np.float32)
        ref = cls(names, n_features, flat_edges, _offsets(edges), np.zeros((len(names), bins + 1)),
                  flat_sample, _offsets(samples), mean, std, dict(meta or {}))
        w, woff, nw = ref._sorted_keys(x, 0, len(names))
        counts = ref._bin_counts(w, woff, nw, x.shape[0], 0, len(names))
        total = counts.sum(axis=1, keepdims=True)
        shares = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
        return cls(names, n_features, flat_edges, ref.edge_offsets, shares, flat_sample,
                   ref.sample_offsets, mean, std, {**(meta or {}), "rows": int(x.shape[0]), "bins": bins})

    # -- scoring --------------------------------------------------------------------------------
    def scores(self, window: np.ndarray, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """PSI and KS of the window's columns ``lo:hi`` (signals lo..hi-1; NaN = missing) against
        the reference: two float64 arrays of ``hi - lo`` values.  KS is NaN where the window (or
        the reference) has no finite value of a signal; PSI is NaN only for an output without
        one (a feature's missing values are a bin of their own, so all-missing is drift)."""
        hi = len(self.names) if hi is None else hi
        w, woff, nw = self._sorted_keys(window, lo, hi)
        n = window.shape[0]
        return self._psi(w, woff, nw, n, lo, hi), self._ks(w, woff, nw, lo, hi)

    def _sorted_keys(self, window: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The finite values of columns lo:hi as sorted signal-prefixed keys, with each signal's
        count and offset in that array."""
        k, n = hi - lo, window.shape[0]
        x = np.ascontiguousarray(window[:, lo:hi].T, dtype=np.float32).ravel()
        sig = np.repeat(np.arange(lo, hi), n)
        ok = ~np.isnan(x)
        # One sort; every count after it is a search into it (queries sorted: cache friendly).
        w = np.sort(_keyed(sig[ok], x[ok]))
        nw = np.bincount(sig[ok] - lo, minlength=k)
        return w, np.concatenate(([0], np.cumsum(nw))), nw

    def _psi(self, w: np.ndarray, woff: np.ndarray, nw: np.ndarray, n: int, lo: int, hi: int) -> np.ndarray:
        counts = self._bin_counts(w, woff, nw, n, lo, hi)
        total = counts.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = counts / total[:, None]
            terms = (p - self.proportions[lo:hi]) * (np.log(np.maximum(p, _EPS)) - self._logref[lo:hi])
        out: np.ndarray = terms.sum(axis=1)
        out[total == 0] = np.nan
        return out

    def _bin_counts(self, w: np.ndarray, woff: np.ndarray, nw: np.ndarray, n: int, lo: int,
                    hi: int) -> np.ndarray:
        """Counts per bin: a value's bin is the number of its signal's edges <= it, so bin r
        holds (values < edge r) - (values < edge r-1); the last value bin takes the rest."""
        k = hi - lo
        counts = np.zeros((k, self.bins + 1))
        e0, e1 = int(self.edge_offsets[lo]), int(self.edge_offsets[hi])
        es = self._esig[e0:e1] - lo
        below = np.searchsorted(w, self._ekeys[e0:e1], side="left") - woff[es]
        rank = np.arange(e1 - e0) - (self.edge_offsets[lo:hi][es] - e0)
        counts[es, rank] += below
        counts[es, rank + 1] -= below
        counts[np.arange(k), np.diff(self.edge_offsets[lo:hi + 1])] += nw
        feats = np.arange(lo, hi) < self.n_features
        counts[feats, -1] = n - nw[feats]  # features: a missing value is a bin of its own
        return counts

    def _ks(self, w: np.ndarray, woff: np.ndarray, nw: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """sup |F_window - F_reference| per signal, evaluated at the last of every run of equal
        values on both sides (right-continuous CDFs: that is where the supremum is reached)."""
        k = hi - lo
        r0, r1 = int(self.sample_offsets[lo]), int(self.sample_offsets[hi])
        r = self._rkeys[r0:r1]
        roff = self.sample_offsets[lo:hi + 1] - r0
        nr = np.diff(roff)
        wend = np.flatnonzero(np.concatenate((w[1:] != w[:-1], [True]))) if len(w) else np.zeros(0, np.int64)
        wk = w[wend]
        ws = (wk >> np.uint64(32)).astype(np.int64) - lo
        a, b = np.searchsorted(self._rend, [r0, r1])
        rend = self._rend[a:b]
        rs = self._rsig[rend] - lo
        out = np.zeros(k)
        with np.errstate(divide="ignore", invalid="ignore"):
            gap_w = np.abs((wend + 1 - woff[ws]) / nw[ws]
                           - (np.searchsorted(r, wk, side="right") - roff[ws]) / nr[ws])
            gap_r = np.abs((np.searchsorted(w, self._rkeys[rend], side="right") - woff[rs]) / nw[rs]
                           - (rend + 1 - r0 - roff[rs]) / nr[rs])
        np.maximum.at(out, ws, np.where(np.isfinite(gap_w), gap_w, 0.0))
        np.maximum.at(out, rs, np.where(np.isfinite(gap_r), gap_r, 0.0))
        out[(nw == 0) | (nr == 0)] = np.nan
        return out

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the reference to ``path`` (``.npz``; parent directories are created)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"format": FORMAT, "n_features": self.n_features, **self.meta}, sort_keys=True)
        tmp = p.with_name(f".{p.name}.tmp")
        with tmp.open("wb") as f:
            np.savez(f, names=np.array(self.names, dtype=str), edges=self.edges,
                     edge_offsets=self.edge_offsets, proportions=self.proportions, sample=self.sample,
                     sample_offsets=self.sample_offsets, mean=self.mean, std=self.std, meta=np.array(meta))
        tmp.replace(p)  # readers never see half a file
        return p

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        """Read a reference written by ``save`` (DriftReferenceError when missing or malformed)."""
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in (*_ARRAYS, "meta")}
        except FileNotFoundError:
            raise DriftReferenceError(
                f"no drift reference at {p}: build one with `tailguard drift reference`") from None
        except (OSError, ValueError, KeyError) as exc:
            raise DriftReferenceError(f"{p} is not a drift reference: {exc}") from exc
        meta = json.loads(str(arrays.pop("meta")))
        if meta.get("format") != FORMAT:
            raise DriftReferenceError(f"{p}: drift reference format {meta.get('format')!r}, "
                                      f"this version reads {FORMAT}")
        n_features = int(meta.pop("n_features"))
        names = tuple(str(n) for n in arrays.pop("names").tolist())
        return cls(names, n_features, arrays["edges"].astype(np.float32),
                   arrays["edge_offsets"].astype(np.int64), arrays["proportions"].astype(np.float64),
                   arrays["sample"].astype(np.float32), arrays["sample_offsets"].astype(np.int64),
                   arrays["mean"], arrays["std"], meta)


def _offsets(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(([0], np.cumsum([len(p) for p in parts], dtype=np.int64))).astype(np.int64)
