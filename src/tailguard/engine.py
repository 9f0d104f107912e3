"""The in-process hot path: entity keys + context -> features -> ladder -> decision, timed.

``Engine.predict`` answers one entity, ``Engine.predict_batch`` many (a recommender's
candidates).  Each call is split into the four stages of the design — ingest (validate,
resolve priority, budget and entity rows), features (fill the wide feature vector), inference
(walk the ladder) and delivery (form the decision) — timed with the injected clock in
integer nanoseconds.  Side-path hooks (latency histograms, audit, metrics, drift) receive the
finished decision; they must only enqueue, and with no hook installed the cost is one
``None`` test.  Heavier side-path work (histogram aggregation, probes of skipped models)
runs when the owner calls ``run_side_path`` in idle time — never inside a request.

The module is longer than most here on purpose: the reply path (predict, predict_batch and
the model-rung helper) reads best in one place; ladder data, probes and isolation live in
``resilience/``.

Threading: an engine is owned by one thread (it reuses preallocated buffers).  Run one engine
per worker thread or process; the store's writer must be that same thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tailguard.clock import Clock, MonotonicClock
from tailguard.decision import BatchDecision, Decision, Flag
from tailguard.errors import BudgetExhausted, UnknownPriority, ValidationError
from tailguard.features.assembler import FeatureAssembler
from tailguard.features.keyrows import rows_many, rows_one
from tailguard.features.remote import RemoteFeatures, feature_counters
from tailguard.features.store import InMemoryOnlineStore
from tailguard.resilience.ladder import LastGood, Rung, arm_breakers, swapped_ladder
from tailguard.resilience.probe import Prober
from tailguard.spec import PriorityClass, RungKind

__all__ = ["DecisionHook", "Engine"]

_FALLBACK = int(Flag.FALLBACK)
_MISSED = int(Flag.DEADLINE_MISSED)
_FAILED = int(Flag.MODEL_FAILED)
_UNKNOWN = int(Flag.UNKNOWN_ENTITY)
_STALE = int(Flag.STALE_FEATURE)
_DEGRADED = int(Flag.DEGRADED)
_UNFED = int(Flag.FEATURES_UNAVAILABLE)
_MODEL, _LAST_GOOD, _DEFAULT = RungKind.MODEL, RungKind.LAST_GOOD, RungKind.DEFAULT


@runtime_checkable
class DecisionHook(Protocol):
    """A side-path consumer.  Called on the owner thread after the reply is formed: O(1) only."""

    def on_decision(self, decision: Decision) -> None:
        """Receive one finished decision (enqueue only)."""
        ...

    def on_batch(self, decision: BatchDecision) -> None:
        """Receive one finished batch decision (enqueue only)."""
        ...


class Engine:
    """Features -> ladder -> decision for one service, on one owner thread."""

    def __init__(
        self,
        *,
        store: InMemoryOnlineStore,
        assembler: FeatureAssembler,
        rungs: Sequence[Rung],
        output_names: tuple[str, ...],
        priorities: Sequence[PriorityClass],
        default_priority: str,
        clock: Clock | None = None,
        hooks: Sequence[DecisionHook] = (),
        probe_interval_s: float = 0.05,
        max_batch: int = 1024,
        isolation_slack_s: float = 300e-6,
        background_probes: bool = False,
        remote: RemoteFeatures | None = None,
    ) -> None:
        self.clock = clock or MonotonicClock()
        self._now = self.clock.now_ns
        self.store = store
        self.assembler = assembler
        self.rungs = tuple(rungs)
        arm_breakers(self.rungs, self.clock)
        self.output_names = output_names
        self._k1 = len(output_names) == 1
        self.rung_names = tuple(r.name for r in self.rungs)
        # The ladder from each rung down, made once (a degraded request starts lower).
        self._rungs_from = tuple(self.rungs[i:] for i in range(len(self.rungs)))
        self._priorities = {p.name: (p.name, round(p.budget * 1e9)) for p in priorities}
        self._default_priority = self._priorities[default_priority]
        self._entities = assembler.entities
        self._single = assembler.entities[0] if len(assembler.entities) == 1 else None
        # Fast path for the common single-entity lookup (the index object is stable).
        self._single_index = store.entity_index(self._single) if self._single is not None else None
        # A shared online store (features.remote) reads by key; ``store`` then only maps keys to rows.
        self.remote = remote
        if remote is not None:
            self._single_index = None  # every key must get a row (the fast path gives unknown keys 0)
        # Where a request the store cannot feed starts: the first rung with no model rung below it.
        self._unfed_start = max((r.index + 1 for r in self.rungs if r.kind is _MODEL), default=0)
        self._wide = np.zeros((max(max_batch, 1), assembler.width), dtype=np.float32)
        self._wide1 = self._wide[:1]
        self._wide_row = self._wide[0]
        self._last_good = LastGood(len(output_names))
        self._last_observed = [0] * len(self.rungs)
        self._prober = Prober(
            self.rungs, self._now, round(probe_interval_s * 1e9), background=background_probes
        )
        self._probe_results = self._prober.results
        self.set_hooks(hooks)
        # Counters: plain integers and lists, incremented on the hot path, read by statistics().
        n = len(self.rungs)
        self.answered = [0] * n
        self.skipped = [0] * n
        self.failed = [0] * n
        self.timeouts = [0] * n
        self.short_circuited = [0] * n
        self._model_failed = False
        # Kept free below an isolated model's wait: the lower rungs' work plus the timer's
        # wake-up overshoot (a timed wait here overshot by up to ~250 us on a 2-core VM).
        self._delivery_reserve_ns = round(isolation_slack_s * 1e9)
        self.requests = 0
        self.rows = 0
        self.invalid = 0
        self.unknown_entities = 0
        self.stale = 0
        self.deadline_missed = 0

    def set_hooks(self, hooks: Sequence[DecisionHook]) -> None:
        """Install side-path hooks (compiled to None when there are none)."""
        hooks = tuple(hooks)
        self.hooks = hooks
        if not hooks:
            self._emit_one: Any = None
            self._emit_batch: Any = None
        elif len(hooks) == 1:
            self._emit_one = hooks[0].on_decision
            self._emit_batch = hooks[0].on_batch
        else:
            ones = tuple(h.on_decision for h in hooks)
            batches = tuple(h.on_batch for h in hooks)

            def emit_one(d: Decision) -> None:
                for f in ones:
                    f(d)

            def emit_batch(d: BatchDecision) -> None:
                for f in batches:
                    f(d)

            self._emit_one, self._emit_batch = emit_one, emit_batch

    # -- ingest helpers ------------------------------------------------------------------
    def _budget(self, priority: str | None, budget_s: float | None) -> tuple[str, int]:
        if priority is None:
            name, budget_ns = self._default_priority
        else:
            pc = self._priorities.get(priority)
            if pc is None:
                raise UnknownPriority(
                    f"unknown priority class {priority!r}; declared: {sorted(self._priorities)}",
                    field="priority",
                )
            name, budget_ns = pc
        if budget_s is not None:
            if (
                type(budget_s) not in (int, float)
                or not budget_s > 0.0
                or not math.isfinite(budget_s)
            ):
                raise ValidationError("budget must be a positive number of seconds", field="budget")
            # A request may shorten its class budget, never lengthen it.
            requested = int(budget_s * 1e9)
            if requested < budget_ns:
                budget_ns = requested
        return name, budget_ns

    # -- one entity ------------------------------------------------------------------------
    def predict(
        self,
        keys: Any,
        context: Mapping[str, Any] | None = None,
        *,
        priority: str | None = None,
        budget_s: float | None = None,
        deadline_ns: int | None = None,
        start_rung: int = 0,
    ) -> Decision:
        """Decide for one entity.  ``keys`` is the entity key (or {entity: key} when the
        service has several entities); ``budget_s`` may shorten the class budget.

        A scheduler passes ``deadline_ns`` (absolute, on the engine's clock: the request's
        arrival plus its budget, so time spent queued counts) and ``start_rung`` (skip the
        rungs above it: admission predicted they cannot finish in time; flagged DEGRADED)."""
        now = self._now
        t0 = now()
        k1 = self._k1
        isfinite = math.isfinite
        try:
            pc = self._default_priority if priority is None else self._priorities.get(priority)
            if pc is None or budget_s is not None:
                pname, budget_ns = self._budget(priority, budget_s)
            else:
                pname, budget_ns = pc
            deadline = t0 + budget_ns if deadline_ns is None else deadline_ns
            index = self._single_index
            if index is not None and type(keys) is index.key_type:
                rows: tuple[int, ...] = (index.rows.get(keys, 0),)
            else:
                rows = rows_one(self.store, self._entities, self._single, keys)
            t1 = now()
            if self.remote is None:
                flags = self.assembler.fill_one(rows, context, self._wide_row, t1)
            else:
                flags = self.remote.fill_one(keys, context, self._wide_row, t1, deadline)
        except ValidationError:
            self.invalid += 1
            raise
        t2 = now()
        out: np.ndarray | None = None
        version = ""
        rungs = self.rungs
        if start_rung:
            rungs = self._rungs_from[start_rung]
            flags |= _DEGRADED
        if flags & _UNFED:  # the online store could not feed the models: the rungs below answer
            rungs = self._rungs_from[max(start_rung, self._unfed_start)]
        rung = rungs[0]
        for rung in rungs:
            kind = rung.kind
            if kind is _MODEL:
                y = self._run_model(rung, self._wide1, 1, deadline)
                if y is None:
                    if self._model_failed:
                        flags |= _FAILED
                    continue
                if not isfinite(y[0, 0] if k1 else y.sum()):
                    self._failed_answer(rung)
                    flags |= _FAILED
                    continue
                out = y[0].copy()
                version = rung.label
                br = rung.breaker
                if br is not None and (br.state or br.streak):  # ``br.answered()``, inlined
                    br.success(br.now())
                self._last_good.put(rows[0], out, self._last_observed[rung.index])
                break
            if kind is _LAST_GOOD:
                out = self._last_good.get(rows[0], now(), rung.max_age_ns)
                if out is None:
                    continue
                break
            out = rung.default
            break
        t3 = now()
        if out is None:
            raise BudgetExhausted("no ladder rung could answer in time and no default is declared")
        if rung.index:
            flags |= _FALLBACK
        if flags & _UNKNOWN:
            self.unknown_entities += 1
        if flags & _STALE:
            self.stale += 1
        self.answered[rung.index] += 1
        self.requests += 1
        d = Decision(keys, out, self.output_names, version, rung.name, rung.index, flags, pname,
                     (0, 0, 0, 0, 0))
        t4 = now()
        d.timings_ns = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)
        if t4 > deadline:
            d.flags = flags | _MISSED
            self.deadline_missed += 1
        if self._emit_one is not None:
            self._emit_one(d)
        return d

    # -- many entities ---------------------------------------------------------------------
    def predict_batch(
        self,
        keys: Any,
        context: Mapping[str, Any] | None = None,
        *,
        priority: str | None = None,
        budget_s: float | None = None,
        deadline_ns: int | None = None,
        start_rung: int = 0,
    ) -> BatchDecision:
        """Decide for N entities at once.  ``keys`` is a sequence of entity keys (or a
        mapping entity -> sequence or scalar, scalars broadcast); context values are
        scalars (shared) or arrays of shape (N,).  ``deadline_ns`` and ``start_rung`` as in
        ``predict``."""
        now = self._now
        t0 = now()
        try:
            pname, budget_ns = self._budget(priority, budget_s)
            deadline = t0 + budget_ns if deadline_ns is None else deadline_ns
            rows, n = rows_many(self.store, self._entities, self._single, keys)
            if n == 0:
                raise ValidationError("empty batch", field="keys")
            if n > self._wide.shape[0]:
                self._wide = np.zeros((n, self._wide.shape[1]), dtype=np.float32)
                self._wide1 = self._wide[:1]
                self._wide_row = self._wide[0]
            t1 = now()
            if self.remote is None:
                flags = self.assembler.fill_many(rows, context, self._wide, t1)
            else:
                flags = self.remote.fill_many(keys, n, context, self._wide, t1, deadline)
        except ValidationError:
            self.invalid += 1
            raise
        t2 = now()
        primary_rows = rows[:, 0]
        wide = self._wide[:n]
        first = self.rungs[start_rung]
        if start_rung:
            flags |= _DEGRADED
        if self.remote is not None and self.remote.down:  # as in predict
            start_rung = max(start_rung, self._unfed_start)
            first = self.rungs[start_rung]
        if first.kind is _MODEL:
            y = self._run_model(first, wide, n, deadline)
        else:
            y, self._model_failed = None, False
        if y is not None and np.isfinite(y).all():
            # Fast path: the first rung answered every row (the common case, no masks).
            out = y.copy()
            rung_of = np.full(n, start_rung, dtype=np.int8)
            version = first.label
            if first.breaker is not None:
                first.breaker.answered()
            self._last_good.put_many(primary_rows, out, self._last_observed[start_rung])
            t3 = now()
            self.answered[start_rung] += n
        else:
            if self._model_failed:
                flags |= _FAILED
            out, rung_of, version = self._ladder_many(y, primary_rows, flags, n, deadline, start_rung)
            t3 = now()
            flags[rung_of > 0] |= _FALLBACK
            counts = np.bincount(rung_of, minlength=len(self.rungs))
            for i, c in enumerate(counts.tolist()):
                self.answered[i] += c
        if flags.any():
            self.unknown_entities += int(np.count_nonzero(flags & _UNKNOWN))
            self.stale += int(np.count_nonzero(flags & _STALE))
        self.requests += 1
        self.rows += n
        d = BatchDecision(keys, out, self.output_names, version, self.rung_names, rung_of, flags,
                          pname, (0, 0, 0, 0, 0))
        t4 = now()
        d.timings_ns = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)
        if t4 > deadline:
            flags |= _MISSED
            self.deadline_missed += 1
        if self._emit_batch is not None:
            self._emit_batch(d)
        return d

    def _ladder_many(
        self,
        y0: np.ndarray | None,
        primary_rows: np.ndarray,
        flags: np.ndarray,
        n: int,
        deadline: int,
        start: int = 0,
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """The general batch ladder, row by row masks, from rung ``start``: ``y0`` is that
        rung's answer (None if it gave none).  Returns outputs, rung index per row and the
        model label."""
        now = self._now
        out = np.empty((n, len(self.output_names)), dtype=np.float64)
        rung_of = np.full(n, -1, dtype=np.int8)
        pending = np.ones(n, dtype=bool)
        version = ""
        for rung in self._rungs_from[start]:
            if rung.kind is _MODEL:
                y = y0 if rung.index == start else self._run_model(rung, self._wide[:n], n, deadline)
                if y is None:
                    if rung.index != start and self._model_failed:
                        flags[pending] |= _FAILED
                    continue
                te = self._last_observed[rung.index]
                good = np.isfinite(y).all(axis=1)
                take = pending & good
                if not good.all():
                    self._failed_answer(rung)
                    flags[pending & ~good] |= _FAILED
                elif rung.breaker is not None:
                    rung.breaker.answered()
                if take.any():
                    out[take] = y[take]
                    rung_of[take] = rung.index
                    pending &= ~take
                    version = version or rung.label
                    self._last_good.put_many(primary_rows[take], y[take], te)
            elif rung.kind is _LAST_GOOD:
                ok = pending & self._last_good.available(primary_rows, now(), rung.max_age_ns)
                if ok.any():
                    out[ok] = self._last_good.outputs[primary_rows[ok]]
                    rung_of[ok] = rung.index
                    pending &= ~ok
            else:
                out[pending] = rung.default
                rung_of[pending] = rung.index
                pending[:] = False
            if not pending.any():
                break
        if pending.any():
            raise BudgetExhausted("no ladder rung could answer in time and no default is declared")
        return out, rung_of, version

    # -- model rungs -------------------------------------------------------------------------
    def _run_model(self, rung: Rung, wide: np.ndarray, n: int, deadline: int) -> np.ndarray | None:
        """Skip, run and time one model rung on ``wide`` (the filled rows, ``n`` of them).

        Returns the outputs, or None when the rung gives no answer: skipped because its
        expected time does not fit before ``deadline``, timed out (isolated models), or
        raised (then ``self._model_failed`` is set).  Every outcome is counted.
        """
        self._model_failed = False
        br = rung.breaker
        if br is not None and br.state and not br.allow():
            # Open: the model keeps failing; straight to the next rung, no call, no timeout.
            self.short_circuited[rung.index] += 1
            self._model_failed = True
            return None
        m = rung.model
        assert m is not None
        st = m.service_time
        now = self._now
        if self._probe_results:
            self._prober.fold_results(self._last_observed, self.failed)
        iso = rung.isolated
        if iso is not None and iso.late_ns:
            while iso.late_ns:
                late_n, late_ns = iso.late_ns.pop()
                st.observe(late_n, late_ns)
        if now() + st.expected_ns(n) > deadline:
            self.skipped[rung.index] += 1
            # Skipped models get no timings: a probe off the reply path lets them recover.
            self._prober.request(rung, wide if rung.cols is None else rung.gather(wide, n),
                                 self._last_observed[rung.index])
            return None
        x = wide if rung.cols is None else rung.gather(wide, n)
        ts = now()
        y: np.ndarray | None
        try:
            if iso is None:
                y = m.runtime.run(x)
            else:
                # Leave the lower rungs the time they are expected to need.
                y = iso.call(x, deadline - ts - self._reserve_ns(rung, n))
                if y is None:
                    self.timeouts[rung.index] += 1
                    if br is not None:
                        br.failure(ts)
                    return None
        except Exception:
            self._failed_answer(rung)
            self._model_failed = True
            return None
        te = now()
        st.observe(n, te - ts)
        self._last_observed[rung.index] = te
        return y

    def _failed_answer(self, rung: Rung) -> None:
        """A model rung raised or answered non-finite values: counted, and told to its breaker."""
        self.failed[rung.index] += 1
        br = rung.breaker
        if br is not None:
            br.failure(br.now())

    def last_features(self, n: int) -> np.ndarray:
        """The feature rows the last call filled (``n`` of them; 1 after ``predict``): a view of
        the engine's buffer, valid until the next call — side-path hooks copy what they keep."""
        return self._wide[:n]

    def last_written_ns(self, n: int) -> np.ndarray:
        """Write times (store clock, ns) of the stored rows the last call read: shape
        (``n``, one column per ``assembler.stored_views``), ``NEVER`` where the entity is
        unknown or the row was never written; ``assembler.filled_ns`` is when they were read
        (a row's age at decision time is the difference).  A view, valid until the next call."""
        return self.assembler.written_ns[:n]

    def priority_budgets_ns(self) -> dict[str, int]:
        """Each priority class's budget in ns."""
        return {name: budget for name, budget in self._priorities.values()}

    def expected_ns(self, rung_index: int, n: int) -> int:
        """The expected inference time of rung ``rung_index`` for a batch of ``n`` rows
        (the model's learned estimate; 0 for rungs that are not models)."""
        m = self.rungs[rung_index].model
        return 0 if m is None else int(m.service_time.expected_ns(n))

    def _reserve_ns(self, rung: Rung, n: int) -> int:
        reserve = self._delivery_reserve_ns
        for lower in self.rungs[rung.index + 1 :]:
            if lower.model is not None:
                reserve += int(lower.model.service_time.expected_ns(n))
                break
        return reserve

    # -- warm-up (tailguard.warmup does the work) ----------------------------------------------
    def warm_up(self, iterations: int = 200, batch_sizes: tuple[int, ...] = (8, 64)) -> None:
        """Exercise the whole decision path before traffic (see ``tailguard.warmup.warm_up``)."""
        from tailguard.warmup import warm_up

        warm_up(self, iterations, batch_sizes)

    def calibrate(self, batch_sizes: Sequence[int], repeats: int,
                  observe: Callable[[int, int, int], None], singles_below: int = 0) -> None:
        """Time every model rung at every batch size (see ``tailguard.warmup.calibrate``)."""
        from tailguard.warmup import calibrate

        calibrate(self, batch_sizes, repeats, observe, singles_below)

    def replace_model(self, rung_name: str, model: Any) -> Any:
        """Point model rung ``rung_name`` at ``model`` (a loaded, verified, warmed-up
        ``LoadedModel``); returns the one it replaces.  Owner thread, between decisions
        (``tailguard.registry.swap`` hands the call over): the new ladder is built aside by
        ``resilience.ladder.swapped_ladder`` (``ModelError``, nothing changed, when the model
        does not fit) and published by rebinding ``rungs`` and ``_rungs_from``, so a decision
        walks the old ladder or the new one.  Counters stay; a probe queued for the old model
        is dropped; skips use the new model's own estimate, seeded by its warm-up."""
        rungs, index, old = swapped_ladder(self.rungs, rung_name, model, self.assembler.columns,
                                           self.output_names)
        self._prober.replace_rungs(rungs, index)
        self._rungs_from = tuple(rungs[i:] for i in range(len(rungs)))
        self.rungs = rungs
        arm_breakers(self.rungs, self.clock)
        return old

    def reset_statistics(self) -> None:
        """Zero every counter (not the models' service-time estimates)."""
        n = len(self.rungs)
        self.answered = [0] * n
        self.skipped = [0] * n
        self.failed = [0] * n
        self.timeouts = [0] * n
        self.short_circuited = [0] * n
        self.requests = self.rows = self.invalid = 0
        self.unknown_entities = self.stale = self.deadline_missed = 0
        if self.remote is not None:
            self.remote.reset_statistics()

    # -- side path ---------------------------------------------------------------------------
    def run_side_path(self, budget_ns: int | None = None) -> int:
        """Run owner probes (models without a background probe) in idle time, for at most
        ``budget_ns`` (None: all); returns how many ran.  See ``resilience.probe``."""
        self._prober.fold_results(self._last_observed, self.failed)
        return self._prober.run_pending(budget_ns, self._last_observed, self.failed)

    def close(self) -> None:
        """Stop the engine's helper threads (background probes, isolated models)."""
        self._prober.close()
        for r in self.rungs:
            if r.isolated is not None:
                r.isolated.close()

    def statistics(self) -> dict[str, Any]:
        """Counters: requests, batch_rows, invalid, unknown_entities, stale, deadline_missed,
        features_unavailable and features_unconfirmed (rows; 0 without a remote store), and per
        rung answered / skipped_budget / failed / timed_out with the expected time."""
        return {
            "requests": self.requests,
            "batch_rows": self.rows,
            "invalid": self.invalid,
            "unknown_entities": self.unknown_entities,
            "stale": self.stale,
            "deadline_missed": self.deadline_missed,
            **feature_counters(self.remote),
            "rungs": {
                r.name: {
                    "answered": self.answered[r.index],
                    "skipped_budget": self.skipped[r.index],
                    "failed": self.failed[r.index],
                    "timed_out": self.timeouts[r.index],
                    "short_circuited": self.short_circuited[r.index],
                    "breaker": None if r.breaker is None else r.breaker.state.name.lower(),
                    "expected_us_batch1": (
                        round(r.model.service_time.expected_ns(1) / 1e3, 2) if r.model else None
                    ),
                }
                for r in self.rungs
            },
        }
