"""The budget check itself: synthetic open-loop load through the engine, then the verdict.

``check_budget(service, options)`` drives ``engine.predict`` (or ``predict_batch`` with
``batch > 1``) at ``rate_hz`` requests per second for ``seconds``, each request due at an
*intended* time fixed in advance (``bench.openloop.ArrivalSchedule``) with its deadline at
that time plus the class budget, so falling behind counts against the service as it would
for real arrivals.  Per request it keeps the engine's five stage timings and the response
time from the intended time, then folds them into HDR histograms
(``observe.latency.StageHistograms``) and checks:

- each stage's p99 (ingest, features, inference, delivery, total) against ``[budgets]``;
- the response p99 (end to end, from the intended send time) against the class budget;
- the share of decisions past their deadline (or unanswered) against ``max_missed``;
- with labelled data and a floor, the primary model's AUC on the shifted rows.

Waiting uses the engine's clock: with the real clock a ``Pacer`` (side-path work in idle
gaps); with a clock that has ``advance`` (``tailguard.testing.FakeClock``) time is moved to
each intended time instead, which makes a test's figures exact.  Owner thread only.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tailguard.bench.openloop import ArrivalSchedule, Pacer
from tailguard.checkbudget.problems import BudgetCheckError
from tailguard.checkbudget.report import BudgetReport, Check
from tailguard.checkbudget.shift import Shift, load_shift
from tailguard.checkbudget.workload import Workload
from tailguard.decision import STAGES
from tailguard.errors import BudgetExhausted
from tailguard.observe.latency import StageHistograms
from tailguard.observe.quality import auc
from tailguard.service import Service, load_service

__all__ = ["Options", "check_budget", "run_check_budget"]


@dataclass(frozen=True)
class Options:
    """What to run and judge: requests per second, run length (s), rows per request, the
    priority class (None: the spec's default), the shift file, labelled data (``label`` column
    of a Parquet file) with its AUC floor, synthetic entities, the tolerated share of missed
    deadlines and the random seed."""

    rate_hz: float = 1000.0
    seconds: float = 5.0
    batch: int = 1
    priority: str | None = None
    shift: str | Path | None = None
    data: str | Path | None = None
    label: str = "label"
    accuracy_floor: float | None = None
    entities: int = 256
    max_missed: float = 0.001
    seed: int = 0

    def validate(self) -> None:
        """``BudgetCheckError`` for values no run can use."""
        if not self.rate_hz > 0:
            raise BudgetCheckError(f"--rate must be > 0, got {self.rate_hz}")
        if not self.seconds > 0:
            raise BudgetCheckError(f"--seconds must be > 0, got {self.seconds}")
        if self.batch < 1:
            raise BudgetCheckError(f"--batch must be >= 1, got {self.batch}")
        if self.entities < 1:
            raise BudgetCheckError(f"--entities must be >= 1, got {self.entities}")
        if not 0.0 <= self.max_missed <= 1.0:
            raise BudgetCheckError(f"--max-missed is a share in [0, 1], got {self.max_missed}")
        if self.accuracy_floor is not None and self.data is None:
            raise BudgetCheckError("--accuracy-floor needs --data (labelled rows to score)")


def _waiter(service: Service) -> Callable[[int], int]:
    clock = service.engine.clock
    if clock.now_ns is time.perf_counter_ns:
        return Pacer(service.run_side_path).wait_until
    advance = getattr(clock, "advance", None)
    if advance is None:
        raise BudgetCheckError("check-budget runs on the real clock or on a clock with advance() (FakeClock)")
    now = clock.now_ns

    def wait_fake(t_ns: int) -> int:
        gap = t_ns - now()
        if gap > 0:
            advance(ns=gap)
            return 0
        return -gap

    return wait_fake


def _read_labelled(path: Path, inputs: Sequence[str], label: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise BudgetCheckError(f"{path}: no such labelled data file")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                if "X" not in z or "y" not in z:
                    raise BudgetCheckError(f"{path}: an .npz needs arrays X and y, has {sorted(z.files)}")
                x = np.asarray(z["X"], dtype=np.float64)
                y = np.asarray(z["y"], dtype=np.float64)
                columns = [str(c) for c in z["columns"]] if "columns" in z else None
        except (OSError, ValueError) as exc:
            raise BudgetCheckError(f"{path}: not a readable .npz: {exc}") from exc
        if x.ndim != 2:
            raise BudgetCheckError(f"{path}: X must be 2-D, is {x.shape}")
        if columns is None:
            if x.shape[1] != len(inputs):
                raise BudgetCheckError(f"{path}: X has {x.shape[1]} columns, the primary model reads "
                                       f"{list(inputs)} (add a 'columns' array naming them)")
        else:
            missing = [c for c in inputs if c not in columns]
            if missing:
                raise BudgetCheckError(f"{path}: missing data column(s) {missing}")
            x = x[:, [columns.index(c) for c in inputs]]
    else:
        try:
            pq = importlib.import_module("pyarrow.parquet")
        except ImportError as exc:
            raise BudgetCheckError(f"{path}: reading Parquet needs pyarrow: pip install "
                                   "'tailguard[history]' (or pass an .npz)") from exc
        try:
            names = set(pq.read_schema(path).names)
        except Exception as exc:  # pyarrow's own error types: an unreadable file is bad input
            raise BudgetCheckError(f"{path}: not a readable Parquet file: {exc}") from exc
        missing = [c for c in (*inputs, label) if c not in names]
        if missing:
            raise BudgetCheckError(f"{path}: missing data column(s) {missing} (label column: --label)")
        table = pq.read_table(path, columns=[*inputs, label])
        x = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                             for c in inputs])
        y = table.column(label).to_numpy(zero_copy_only=False).astype(np.float64)
    if len(y) != len(x):
        raise BudgetCheckError(f"{path}: {len(x)} feature rows but {len(y)} labels")
    return x, y


def _accuracy(service: Service, opts: Options, shift: Shift) -> dict[str, object] | None:
    """The primary model's AUC on the labelled rows with the shift applied (None without data)."""
    if opts.data is None:
        return None
    rung = service.engine.rungs[0]
    model = rung.model
    assert model is not None  # the spec's first rung is a model rung
    inputs = model.manifest.inputs
    x, y = _read_labelled(Path(opts.data), inputs, opts.label)
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    if not np.isin(y, (0.0, 1.0)).all() or len(np.unique(y)) != 2:
        raise BudgetCheckError(f"{opts.data}: the accuracy check needs binary labels (0 and 1, both present)")
    shifted = [c for c in inputs if c in shift.features]
    for c in shifted:
        j = inputs.index(c)
        x[:, j] = shift.features[c].apply(x[:, j])
    xf = np.ascontiguousarray(x, dtype=np.float32)
    # Copied per chunk: a runtime may answer in a buffer it reuses on its next call.
    scores = np.concatenate([np.array(model.runtime.run(xf[i:i + 1024])[:, 0], dtype=np.float64)
                             for i in range(0, len(xf), 1024)])
    return {"model": model.label, "output": model.manifest.outputs[0], "rows": len(y),
            "auc": auc(y, scores), "floor": opts.accuracy_floor, "shifted_columns": shifted}


def check_budget(service: Service, opts: Options, *,
                 wait: Callable[[int], int] | None = None) -> BudgetReport:
    """Run the check on a loaded ``service`` (see the module docstring).  ``wait(t_ns)``
    returns at the engine clock's ``t_ns`` (default: see the module docstring)."""
    opts.validate()
    engine = service.engine
    budgets = engine.priority_budgets_ns()
    pname = opts.priority or service.spec.default_priority
    if pname not in budgets:
        raise BudgetCheckError(f"unknown priority class {pname!r}; the spec declares {sorted(budgets)}")
    budget_ns = budgets[pname]
    asm = engine.assembler
    shift = Shift() if opts.shift is None else load_shift(opts.shift, asm.columns, asm.context_fields)
    accuracy = _accuracy(service, opts, shift)
    workload = Workload(service, shift, entities=opts.entities, batch=opts.batch, seed=opts.seed)
    wait = wait or _waiter(service)
    now = engine.clock.now_ns
    call = engine.predict if opts.batch == 1 else engine.predict_batch
    reqs, n_pool = workload.requests, len(workload.requests)
    schedule = ArrivalSchedule(now() + 1_000_000, opts.rate_hz, opts.seconds)
    timings = np.zeros((schedule.expected + 1, len(STAGES) + 1), dtype=np.int64)
    engine.reset_statistics()
    refresh = workload.refresh_ns
    next_refresh = None if refresh is None else now() + refresh
    i = exhausted = 0
    first = schedule.start_ns
    while True:
        chunk = schedule.next_chunk()
        if not len(chunk):
            break
        for t in chunk.tolist():
            wait(t)
            if next_refresh is not None and now() >= next_refresh:
                workload.refresh()
                next_refresh = now() + refresh  # type: ignore[operator]
            keys, ctx = reqs[(i + exhausted) % n_pool]
            try:
                d = call(keys, ctx, priority=pname, deadline_ns=t + budget_ns)
            except BudgetExhausted:
                exhausted += 1
                continue
            timings[i, : len(STAGES)] = d.timings_ns
            timings[i, len(STAGES)] = now() - t
            i += 1
    elapsed_ns = max(now() - first, 1)
    stats = engine.statistics()
    hists = StageHistograms((*STAGES, "response"))
    hists.record_array(timings[:i])
    stages = hists.summary()
    sb = service.spec.budgets
    budgets_us = {s: getattr(sb, s) * 1e6 for s in STAGES}
    budgets_us["response"] = budget_ns / 1e3
    checks = [Check(f"{s} p99", stages[s]["p99_us"], budgets_us[s], "us",
                    stages[s]["p99_us"] <= budgets_us[s]) for s in STAGES]
    checks.append(Check("end-to-end p99 (response from intended)", stages["response"]["p99_us"],
                        budgets_us["response"], "us", stages["response"]["p99_us"] <= budgets_us["response"]))
    total = i + exhausted
    missed = int(stats["deadline_missed"]) + exhausted
    share = missed / total if total else 0.0
    checks.append(Check("deadline missed", share * 100, opts.max_missed * 100, "%", share <= opts.max_missed))
    if accuracy is not None and opts.accuracy_floor is not None:
        a = float(accuracy["auc"])  # type: ignore[arg-type]
        floor = opts.accuracy_floor
        checks.append(Check("accuracy (AUC)", a, floor, "", a >= floor, upper=False))
    rungs = stats["rungs"]
    return BudgetReport(
        service=service.spec.name, priority=pname, class_budget_us=budget_ns / 1e3, batch=opts.batch,
        rate_hz=opts.rate_hz, seconds=opts.seconds, decisions=total, achieved_hz=total * 1e9 / elapsed_ns,
        stages=stages, budgets_us=budgets_us, missed=missed, exhausted=exhausted, max_missed=opts.max_missed,
        answered={k: int(v["answered"]) for k, v in rungs.items()},
        skipped={k: int(v["skipped_budget"]) for k, v in rungs.items()},
        shift=shift.as_dict(), accuracy=accuracy, checks=checks,
    )


def run_check_budget(directory: str | Path, opts: Options) -> BudgetReport:
    """Load the service directory, check it (bad options fail before loading), close it."""
    opts.validate()
    service = load_service(directory)
    try:
        return check_budget(service, opts)
    finally:
        service.engine.close()
        service.close()
