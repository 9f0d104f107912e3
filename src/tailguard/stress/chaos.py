"""A model runtime that can be made slow or made to raise, inside a real server process.

``python -m tailguard.stress.chaos CONTROL serve SERVICE_DIR [serve options]`` runs
``tailguard serve`` with every model of the ladder's first rung wrapped in ``ChaosRuntime``.
The fault is switched from outside: write ``CONTROL`` (JSON ``{"mode": "off"|"slow"|"raise",
"factor": 10, "floor_ms": 1}``) and send the server ``SIGUSR1``; the handler re-reads the file
and flips the switch shared by the runtime and its clones (the engine's off-path probe sees
the same fault, as it would with a real slow model).  Only single-process servers
(``--workers 1``): a supervisor would not pass the signal on.

"Slow" makes each call take ``factor`` times its own measured time and at least
``floor_ms`` more: the example models answer in microseconds, where ten times slower would
still fit every budget, so the floor is what makes the fault visible.  The extra time is
slept (the loop is blocked, as by an inline model computing) or, under 200 µs, spun.

This is the mechanism of ``tailguard.demo.trading.SlowedRuntime`` (a wrapper with a switch
shared by clones), extended with raising and driven by a signal instead of a schedule.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.models.runtime import Runtime
from tailguard.stress.problems import InjectedFault

__all__ = ["ChaosRuntime", "ChaosSwitch", "main", "write_control"]

OFF, SLOW, RAISE = 0, 1, 2
_MODES = {"off": OFF, "slow": SLOW, "raise": RAISE}


class ChaosSwitch:
    """The fault state shared by a runtime and its clones: mode, slow factor and floor (ns)."""

    __slots__ = ("factor", "floor_ns", "mode")

    def __init__(self) -> None:
        self.mode = OFF
        self.factor = 10.0
        self.floor_ns = 1_000_000

    def load(self, path: Path) -> None:
        """Set the state from a control file (a missing or bad file switches the fault off)."""
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = {}
        self.factor = float(doc.get("factor", 10.0))
        self.floor_ns = round(float(doc.get("floor_ms", 1.0)) * 1e6)
        self.mode = _MODES.get(str(doc.get("mode", "off")), OFF)


def write_control(path: Path, mode: str, *, factor: float = 10.0, floor_ms: float = 1.0) -> None:
    """Write a control file (atomically) for ``ChaosSwitch.load``."""
    if mode not in _MODES:
        raise ValueError(f"chaos mode must be one of {sorted(_MODES)}, not {mode!r}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"mode": mode, "factor": factor, "floor_ms": floor_ms}))
    tmp.replace(path)


class ChaosRuntime:
    """Wraps a runtime; ``switch`` decides whether a call is plain, slowed or raises."""

    def __init__(self, inner: Runtime, switch: ChaosSwitch) -> None:
        self.inner = inner
        self.switch = switch
        self.kind = inner.kind
        self.n_inputs = inner.n_inputs
        self.n_outputs = inner.n_outputs

    def clone(self) -> ChaosRuntime:
        """A clone over the inner runtime's clone, sharing the switch."""
        inner_clone = getattr(self.inner, "clone", None)
        return ChaosRuntime(inner_clone() if inner_clone is not None else self.inner, self.switch)

    def run(self, x: np.ndarray) -> np.ndarray:
        """The inner runtime's outputs; slower, or ``InjectedFault``, when the switch says so."""
        sw = self.switch
        mode = sw.mode
        if mode == OFF:
            return self.inner.run(x)
        if mode == RAISE:
            raise InjectedFault("model call failed on purpose (stress: raising-model)")
        t0 = time.perf_counter_ns()
        y = self.inner.run(x)
        took = time.perf_counter_ns() - t0
        extra = max(round((sw.factor - 1.0) * took), sw.floor_ns)
        if extra >= 200_000:
            time.sleep(extra / 1e9)
        else:
            end = t0 + took + extra
            while time.perf_counter_ns() < end:
                continue  # busy wait: exact, like a model computing
        return y


def _install(control: Path) -> None:
    """Patch ``tailguard.service.load_service`` so the served engine's first-rung model is
    wrapped, and re-read ``control`` on SIGUSR1."""
    import tailguard.service as service_mod

    original = service_mod.load_service
    switch = ChaosSwitch()
    switch.load(control)

    def load_service(directory: Any, **kwargs: Any) -> Any:
        svc = original(directory, **kwargs)
        first = svc.spec.ladder[0].model or ""
        model = svc.models.get(first) if first else None
        if model is not None:
            model.runtime = ChaosRuntime(model.runtime, switch)
        return svc

    service_mod.load_service = load_service
    signal.signal(signal.SIGUSR1, lambda signum, frame: switch.load(control))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tailguard.stress.chaos CONTROL serve SERVICE_DIR ...``: see the module doc."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[1] != "serve":
        print("usage: python -m tailguard.stress.chaos CONTROL serve SERVICE_DIR [options]", file=sys.stderr)
        return 2
    _install(Path(args[0]))
    from tailguard.cli import main as cli_main

    return cli_main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
