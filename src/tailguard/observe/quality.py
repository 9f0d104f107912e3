"""Model-quality figures computed from decisions and realised labels."""

from __future__ import annotations

import numpy as np

__all__ = ["auc"]


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, tied scores get averaged ranks).

    NaN when ``y`` holds a single class.
    """
    yb = np.asarray(y).astype(bool)
    n_pos = int(yb.sum())
    n_neg = len(yb) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score)[order]
    _, first, counts = np.unique(s, return_index=True, return_counts=True)
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[yb].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
