"""Synthetic recommender traffic: users, items, impressions and clicks with a hidden truth.

A ``World`` (fixed by its seed) holds what no feature sees directly:

* every item has a category (0-7, public: the catalog) and a hidden *quality*;
* every user has a hidden taste: one favourite category (weight 1.0), often a second one
  (0.6), and a small taste for everything else;
* the true click probability of user ``u`` shown item ``i`` is::

      sigmoid(-2.7 + 2.2 * taste[u, cat(i)] + quality[i]
              + 0.6 * mobile * [cat(i) < 3] + 0.5 * cos(2 pi (hour - 21) / 24) * [cat(i) in (3, 4)])

  (phones favour the first three categories; categories 3 and 4 are evening content).

``History`` is a stretch of traffic in that world: sessions (a user at a time of day on a
device) each shown a slate of items (half drawn at random, half by hidden quality, as an
older recommender would have), the click outcomes drawn from the true probabilities, and
clicks arriving 2-30 s after their impression.  ``events()`` is the merged event stream in
event-time order.  Everything is deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SECOND = 1_000_000_000
HOUR = 3600 * SECOND
N_CATEGORIES = 8  # as in features.py
START_NS = 1_700_000_000 * SECOND
UNKNOWN_USER = "u_new"


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function."""
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


@dataclass(frozen=True)
class World:
    """Users, items and the hidden truth (see the module docstring)."""

    users: list[str]
    items: list[str]
    category: np.ndarray  # (n_items,) int
    quality: np.ndarray  # (n_items,) float, hidden
    taste: np.ndarray  # (n_users, N_CATEGORIES) float, hidden
    activity: np.ndarray  # (n_users,) probability that a session is this user's

    def true_p(self, user: int, items: np.ndarray, hour: float, mobile: float) -> np.ndarray:
        """True click probability of user index ``user`` for item indices ``items``."""
        cat = self.category[items]
        logit = (
            -2.7
            + 2.2 * self.taste[user, cat]
            + self.quality[items]
            + 0.6 * mobile * (cat < 3)
            + 0.5 * np.cos(2.0 * np.pi * (hour - 21.0) / 24.0) * ((cat == 3) | (cat == 4))
        )
        return sigmoid(logit)


def make_world(n_users: int = 2000, n_items: int = 400, seed: int = 1) -> World:
    """A world of ``n_users`` users and ``n_items`` items."""
    rng = np.random.default_rng(seed)
    category = rng.integers(0, N_CATEGORIES, n_items)
    quality = rng.normal(0.0, 0.5, n_items)
    taste = np.full((n_users, N_CATEGORIES), 0.1)
    fav = rng.integers(0, N_CATEGORIES, n_users)
    taste[np.arange(n_users), fav] = 1.0
    second = (fav + rng.integers(1, N_CATEGORIES, n_users)) % N_CATEGORIES
    has_second = rng.random(n_users) < 0.6
    taste[np.arange(n_users)[has_second], second[has_second]] = 0.6
    activity = rng.lognormal(0.0, 0.8, n_users)
    return World(
        users=[f"u{i:05d}" for i in range(n_users)],
        items=[f"i{i:04d}" for i in range(n_items)],
        category=category,
        quality=quality,
        taste=taste,
        activity=activity / activity.sum(),
    )


@dataclass(frozen=True)
class History:
    """Sessions of one stretch of traffic (arrays indexed by session, time-ordered)."""

    world: World
    ts_ns: np.ndarray  # (S,) int64 session time
    user: np.ndarray  # (S,) user index
    hour: np.ndarray  # (S,) hour of day, float
    mobile: np.ndarray  # (S,) 0.0 / 1.0
    slate: np.ndarray  # (S, K) item indices shown
    clicked: np.ndarray  # (S, K) bool
    click_delay_ns: np.ndarray  # (S, K) int64

    def events(self) -> list[dict[str, Any]]:
        """Impressions and clicks merged in event-time order (impressions of a session
        first, in slate order).  Impressions carry ``session`` and ``slot`` for replay."""
        w = self.world
        s_idx, k_idx = np.nonzero(np.ones_like(self.clicked))
        imp_ts = self.ts_ns[s_idx]
        c_s, c_k = np.nonzero(self.clicked)
        click_ts = self.ts_ns[c_s] + self.click_delay_ns[c_s, c_k]
        ts = np.concatenate([imp_ts, click_ts])
        kind = np.concatenate([np.zeros(len(imp_ts)), np.ones(len(click_ts))])
        ss = np.concatenate([s_idx, c_s])
        kk = np.concatenate([k_idx, c_k])
        order = np.lexsort((kk, kind, ts))  # by time, impressions before clicks, then slot
        users, items, cat = w.users, w.items, w.category
        out: list[dict[str, Any]] = []
        for t, c, s, k in zip(ts[order].tolist(), kind[order].tolist(), ss[order].tolist(),
                              kk[order].tolist(), strict=True):
            item = int(self.slate[s, k])
            out.append({"ts_ns": t, "user": users[int(self.user[s])], "item": items[item],
                        "category": int(cat[item]), "click": c, "session": s, "slot": k})
        return out


def generate(
    world: World,
    n_sessions: int = 24_000,
    *,
    slate: int = 8,
    hours: float = 48.0,
    seed: int = 0,
    start_ns: int = START_NS,
) -> History:
    """``n_sessions`` sessions spread over ``hours`` hours from ``start_ns``."""
    rng = np.random.default_rng(seed)
    n_items = len(world.items)
    ts = np.sort(start_ns + (rng.random(n_sessions) * hours * HOUR).astype(np.int64))
    user = rng.choice(len(world.users), n_sessions, p=world.activity)
    hour = ((ts - start_ns) / HOUR) % 24.0
    mobile = (rng.random(n_sessions) < 0.5).astype(np.float64)
    # Half the slate at random, half by hidden quality (the old recommender): no repeats.
    pop = np.exp(world.quality)
    pop /= pop.sum()
    slates = np.empty((n_sessions, slate), dtype=np.int64)
    for s in range(n_sessions):  # generation time only
        by_quality = rng.choice(n_items, slate // 2, replace=False, p=pop)
        rest = rng.choice(np.setdiff1d(np.arange(n_items), by_quality), slate - slate // 2, replace=False)
        slates[s] = np.concatenate([by_quality, rest])
    p = np.stack([world.true_p(int(u), sl, float(h), float(m))
                  for u, sl, h, m in zip(user, slates, hour, mobile, strict=True)])
    clicked = rng.random(p.shape) < p
    delay = rng.integers(2 * SECOND, 30 * SECOND, p.shape)
    return History(world, ts, user, hour, mobile, slates, clicked, delay)
