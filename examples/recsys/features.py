"""Transforms of the recsys service (referenced from service.toml).

Events are impressions and clicks, one mapping each, carrying both entity keys::

    {"ts_ns": int, "user": "u00042", "item": "i0137", "category": 3, "click": 0.0}

``click`` is 0.0 for an impression and 1.0 for a click on an earlier impression.  Because an
event carries both keys, ``Service.stream.process(event)`` folds it into the user's views
*and* the item's views.

* ``UserProfile`` (view ``user_profile``): what the user does — a time-decayed click-through
  rate, clicks in the last hour, a distinct-count sketch of the items seen, and one affinity
  per item category (decayed clicks over decayed impressions in that category, smoothed).
* ``ItemStats`` (view ``item_stats``): how an item fares with everyone — decayed
  impressions, a smoothed decayed click-through rate and the distinct users it reached.
* ``context_features`` (view ``context``): the request's hour of day on the unit circle and
  the device, the same arithmetic for one request (floats) and a batch (arrays).

The item catalog (view ``item_catalog``, the category of each item) is a *batch* view:
``write_catalog`` writes it in bulk, as a nightly job would.

Every aggregate here is an event-time incremental one from ``tailguard.features.aggregates``
(O(1) per event), so replaying the same events gives the same values bit for bit: the
training set built by replay (train.py) is what serving computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tailguard.features.aggregates import DecayedCount, HyperLogLog, WindowCount

SECOND = 1_000_000_000
HOUR = 3600 * SECOND
#: Item categories (the generator in events.py uses the same number).
N_CATEGORIES = 8
USER_HALF_LIFE_NS = 72 * HOUR  # taste changes slowly
ITEM_HALF_LIFE_NS = 6 * HOUR  # item popularity faster
USER_FIELDS = ("ctr", "clicks_1h", "distinct_items", *(f"aff_{c}" for c in range(N_CATEGORIES)))
ITEM_FIELDS = ("impressions", "ctr", "distinct_users")


class UserState:
    """Per-user aggregates (decayed counts per category, a 1 h click window, a sketch)."""

    __slots__ = ("cat_clicks", "cat_imps", "clicks", "clicks_1h", "imps", "items", "out")

    def __init__(self) -> None:
        self.imps = DecayedCount(USER_HALF_LIFE_NS)
        self.clicks = DecayedCount(USER_HALF_LIFE_NS)
        self.cat_imps = [DecayedCount(USER_HALF_LIFE_NS) for _ in range(N_CATEGORIES)]
        self.cat_clicks = [DecayedCount(USER_HALF_LIFE_NS) for _ in range(N_CATEGORIES)]
        self.clicks_1h = WindowCount(HOUR)
        self.items = HyperLogLog(p=6)  # 64 one-byte registers per user, ~13% error
        self.out = [0.0] * len(USER_FIELDS)


class UserProfile:
    """Stream transform for view ``user_profile``."""

    fields = USER_FIELDS

    def new_state(self) -> UserState:
        """A user that has seen nothing."""
        return UserState()

    def update(self, s: UserState, ev: Mapping[str, Any]) -> None:
        """Fold one impression or click in (O(N_CATEGORIES))."""
        ts = int(ev["ts_ns"])
        cat = int(ev["category"])
        click = float(ev["click"]) > 0.0
        out = s.out
        if click:
            s.clicks.update(ts)
            s.cat_clicks[cat].update(ts)
            out[1] = float(s.clicks_1h.update(ts, True))
        else:
            s.imps.update(ts)
            s.cat_imps[cat].update(ts)
            out[1] = float(s.clicks_1h.update(ts, False))
            out[2] = s.items.update(str(ev["item"]))
        # Ratios of counts decayed to the same time (the event's).
        ctr = (s.clicks.value_at(ts) + 0.1) / (s.imps.value_at(ts) + 1.0)
        out[0] = ctr
        for c in range(N_CATEGORIES):
            # Shrunk towards the user's overall rate: a category seen twice says little.
            out[3 + c] = (s.cat_clicks[c].value_at(ts) + 2.0 * ctr) / (s.cat_imps[c].value_at(ts) + 2.0)

    def values(self, s: UserState) -> list[float]:
        """The view's fields, in declared order."""
        return s.out


class ItemState:
    """Per-item aggregates."""

    __slots__ = ("clicks", "imps", "out", "users")

    def __init__(self) -> None:
        self.imps = DecayedCount(ITEM_HALF_LIFE_NS)
        self.clicks = DecayedCount(ITEM_HALF_LIFE_NS)
        self.users = HyperLogLog(p=8)
        self.out = [0.0] * len(ITEM_FIELDS)


class ItemStats:
    """Stream transform for view ``item_stats``."""

    fields = ITEM_FIELDS

    def new_state(self) -> ItemState:
        """An item never shown."""
        return ItemState()

    def update(self, s: ItemState, ev: Mapping[str, Any]) -> None:
        """Fold one impression or click in (O(1))."""
        ts = int(ev["ts_ns"])
        out = s.out
        if float(ev["click"]) > 0.0:
            s.clicks.update(ts)
        else:
            s.imps.update(ts)
            out[2] = s.users.update(str(ev["user"]))
        imps = s.imps.value_at(ts)
        out[0] = imps
        # A Beta(0.5, 4.5) prior: an item with few impressions reads as an average one.
        out[1] = (s.clicks.value_at(ts) + 0.5) / (imps + 5.0)

    def values(self, s: ItemState) -> list[float]:
        """The view's fields, in declared order."""
        return s.out


def context_features(hour: Any, mobile: Any) -> tuple[Any, Any, Any]:
    """Hour of day (0-24) on the unit circle, and the device flag (floats or arrays)."""
    angle = hour * (2.0 * np.pi / 24.0)
    return np.sin(angle), np.cos(angle), mobile * 1.0


def write_catalog(store: Any, items: Sequence[str], categories: np.ndarray) -> None:
    """Write the batch view ``item_catalog`` (one category per item) in bulk."""
    store.write_many("item_catalog", list(items), np.asarray(categories, dtype=np.float64).reshape(-1, 1))
