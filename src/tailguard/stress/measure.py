"""Figures of a fault run: per window (before / during / after the fault) and recovery time.

A request belongs to the window holding its *intended* send time.  In a window:

- ``sent``: requests due in it; ``lost``: of those, the ones never answered successfully
  (a final client error after the client's own retries and failover, or no answer at all by
  the end of the run); ``errors``: the lost ones by final error code; ``shed``: the lost ones
  the server refused on purpose (statuses 20-29: queue full, predicted late, expired...).
- ``late``: answered successfully but after the deadline, which is the request's class
  budget counted from its intended send time plus ``slack`` (the client and loopback
  allowance; the server cannot see time spent before the frame reached it).
- ``p50_ms``/``p99_ms``/``p999_ms``/``max_ms``: latency of successful answers from the
  intended send time (a generator or server that falls behind pays for it).
- ``flags``: successful answers carrying each decision flag (``tailguard.Flag``), by name.
- ``degraded``: successful answers that were not the service's normal answer (a lower
  ladder rung, a failed model, features unavailable: ``load.DEGRADED_FLAGS``).
- ``server_p99_ms``: the server's own time (frame in to reply out), p99.

``recovery_s`` (``recovery``): time from the end of the fault (the dependency is back, the
model healed, the replica restarted) until service is back to calm.  The time after the fault
is cut into ``bin_s`` bins (by intended time); a bin is *calm* when its error share is at most
the before-window's plus the larger of 1 point and three binomial standard deviations (of the
calm share, for the bin's size), its degraded share likewise at most the before-window's plus
the larger of 5 points and three standard deviations, and its p90 latency at most
``max(2 x calm p99, calm p99 + 2 ms)``.  Recovery is the
start of the first bin that begins a run of calm bins lasting ``stable_s``, minus the fault's
end (0.0 when service never left calm); ``None`` when no such run starts before the end.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tailguard.decision import Flag
from tailguard.stress.load import Outcomes

__all__ = ["SHED_CODES", "class_figures", "recovery", "window_figures"]

#: Codes of refusals a server makes on purpose, with a retry-after (wire statuses 20-29).
SHED_CODES = frozenset({"queue_full", "rate_limited", "predicted_late", "expired", "shed_overload",
                        "draining"})


def _ms(v: float) -> float:
    return round(v / 1e6, 3)


def _pct(lat: np.ndarray, q: float) -> float | None:
    return _ms(float(np.percentile(lat, q, method="higher"))) if len(lat) else None


def _flag_counts(flags: np.ndarray) -> dict[str, int]:
    """Successful answers carrying each decision flag, by the flag's name."""
    res: dict[str, int] = {}
    for f in Flag:
        if f.value and f.name is not None:
            n = int(((flags & f.value) != 0).sum())
            if n:
                res[f.name.lower()] = n
    return res


def window_figures(out: Outcomes, sel: np.ndarray, budgets_ns: np.ndarray, slack_ns: int) -> dict[str, Any]:
    """The figures of the requests in boolean mask ``sel`` (see the module docstring);
    ``budgets_ns[c]`` is class ``c``'s budget."""
    sent = int(sel.sum())
    good = sel & out.ok
    ok = int(good.sum())
    lat = out.latency_ns()
    okl = lat[good]
    deadline = budgets_ns[out.cls[good]] + slack_ns
    srv = out.server_ns[good]
    errors = out.error_counts(sel & ~out.ok & out.answered)
    return {
        "sent": sent, "ok": ok, "lost": sent - ok,
        "late": int((okl > deadline).sum()),
        "degraded": int(out.degraded[good].sum()),
        "flags": _flag_counts(out.flags[good]),
        "retried": int((out.attempts[good] > 1).sum()),
        "shed": sum(n for code, n in errors.items() if code in SHED_CODES),
        "errors": errors,
        "unanswered": int((sel & ~out.answered).sum()),
        "p50_ms": _pct(okl, 50), "p99_ms": _pct(okl, 99), "p999_ms": _pct(okl, 99.9),
        "max_ms": _ms(float(okl.max())) if len(okl) else None,
        "server_p99_ms": _pct(srv[srv > 0], 99),
    }


def class_figures(out: Outcomes, sel: np.ndarray, names: list[str], budgets_ns: np.ndarray,
                  slack_ns: int) -> dict[str, Any]:
    """``window_figures`` per priority class, plus each class's budget in ms."""
    res: dict[str, Any] = {}
    for c, name in enumerate(names):
        f = window_figures(out, sel & (out.cls == c), budgets_ns, slack_ns)
        f["budget_ms"] = _ms(float(budgets_ns[c]))
        res[name] = f
    return res


def recovery(out: Outcomes, calm: np.ndarray, fault_end_ns: int, end_ns: int, *, bin_s: float = 0.1,
             stable_s: float = 0.5) -> float | None:
    """Seconds from ``fault_end_ns`` until service is calm again (see the module docstring);
    ``calm`` selects the before-window's requests, ``end_ns`` ends the after-window."""
    lat = out.latency_ns()
    c_n = int(calm.sum())
    if c_n == 0:
        return None
    c_ok = calm & out.ok
    c_err = 1.0 - c_ok.sum() / c_n
    c_deg = out.degraded[c_ok].sum() / max(1, int(c_ok.sum()))
    c_p99 = float(np.percentile(lat[c_ok], 99)) if c_ok.any() else 0.0
    lat_cap = max(2.0 * c_p99, c_p99 + 2e6)
    bin_ns = round(bin_s * 1e9)
    need = max(1, round(stable_s / bin_s))
    n_bins = int((end_ns - fault_end_ns) // bin_ns)
    calm_bins: list[bool] = []
    for b in range(n_bins):
        lo = fault_end_ns + b * bin_ns
        sel = (out.intended >= lo) & (out.intended < lo + bin_ns)
        n = int(sel.sum())
        good = sel & out.ok
        k = int(good.sum())
        if n == 0 or k == 0:
            calm_bins.append(False)
            continue
        err = 1.0 - k / n
        deg = out.degraded[good].sum() / k
        p90 = float(np.percentile(lat[good], 90))
        # Shares in a bin of a few dozen requests are noisy: allow three binomial deviations.
        err_tol = max(0.01, 3.0 * math.sqrt(c_err * (1.0 - c_err) / n))
        deg_tol = max(0.05, 3.0 * math.sqrt(c_deg * (1.0 - c_deg) / k))
        calm_bins.append(err <= c_err + err_tol and deg <= c_deg + deg_tol and p90 <= lat_cap)
    for b in range(0, n_bins - need + 1):
        if all(calm_bins[b:b + need]):
            return round(b * bin_s, 3)
    return None


def timeline(out: Outcomes, start_ns: int, end_ns: int, bin_s: float) -> dict[str, list[Any]]:
    """Per ``bin_s`` bin of intended time from ``start_ns``: requests, successes, degraded
    answers and the p90 latency (ms) of the successes (None when there were none)."""
    bin_ns = round(bin_s * 1e9)
    n_bins = max(0, int((end_ns - start_ns) // bin_ns))
    idx = (out.intended - start_ns) // bin_ns
    lat = out.latency_ns()
    res: dict[str, list[Any]] = {"t_s": [], "sent": [], "ok": [], "degraded": [], "p90_ms": []}
    for b in range(n_bins):
        sel = idx == b
        good = sel & out.ok
        res["t_s"].append(round(b * bin_s, 3))
        res["sent"].append(int(sel.sum()))
        res["ok"].append(int(good.sum()))
        res["degraded"].append(int(out.degraded[good].sum()))
        res["p90_ms"].append(_pct(lat[good], 90))
    return res
