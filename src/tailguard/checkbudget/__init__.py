"""``tailguard check-budget SERVICE_DIR``: a latency-budget gate for a user's CI.

Runs a loaded service in process under synthetic open-loop load at a declared peak rate
(with an optional declared distribution shift), then judges each stage's p99 against the
spec's ``[budgets]``, the response time from each request's intended send time against the
priority class budget, the share of decisions past their deadline against a tolerance and,
with labelled data, the primary model's AUC on the shifted rows against a floor.

Modules: ``problems`` (the error), ``shift`` (the shift file), ``workload`` (synthetic
entities and request context), ``run`` (the open-loop driver), ``report`` (the verdict),
``commands`` (the CLI).  See docs/check-budget.md.
"""

from __future__ import annotations

from tailguard.checkbudget.commands import register_check_budget
from tailguard.checkbudget.problems import BudgetCheckError
from tailguard.checkbudget.report import BudgetReport, Check
from tailguard.checkbudget.run import Options, check_budget, run_check_budget
from tailguard.checkbudget.shift import FieldShift, Shift, load_shift

__all__ = [
    "BudgetCheckError",
    "BudgetReport",
    "Check",
    "FieldShift",
    "Options",
    "Shift",
    "check_budget",
    "load_shift",
    "register_check_budget",
    "run_check_budget",
]
