"""Fault injection under load, with a reliability report (``tailguard stress``, docs/stress.md).

Scenarios (``scenarios.SCENARIOS``) start real server processes (``cluster.Replica``) and real
dependencies (``services``: redis-server, nats-server; ``proxy.DelayProxy``), drive them with
open-loop load through the real client (``load.OpenLoad``), inject a fault, and measure lost
and late requests, p99/p99.9 before, during and after the fault, and the time to recover
(``measure``).  ``runner.run_scenario`` runs one; ``report`` writes Markdown and JSON;
``soak`` runs mixed classes for minutes with periodic faults and checks for growth.
"""

from tailguard.stress.problems import InjectedFault, StressError

__all__ = ["InjectedFault", "StressError"]
