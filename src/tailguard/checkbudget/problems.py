"""The budget check's error (it extends the tree in ``tailguard.errors``)::

    TailguardError
    └── BudgetCheckError   "check_budget_input"   an unknown priority class, a bad shift file,
                                                  unreadable labelled data or a missing column

``tailguard.cli`` turns it into one line on stderr and exit status 2, before any load runs.
"""

from __future__ import annotations

from tailguard.errors import TailguardError

__all__ = ["BudgetCheckError"]


class BudgetCheckError(TailguardError):
    """``tailguard check-budget`` was given input it cannot use (exit status 2)."""

    code = "check_budget_input"
