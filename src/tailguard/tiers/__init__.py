"""Compute tiers: an in-process edge engine that consults a remote tier when time allows.

    import tailguard
    from tailguard.tiers import RemoteTierConfig, TieredEngine, edge_service_dir

    edge = tailguard.load_service(edge_service_dir("examples/trading", "runs/edge", first_rung="fast"))
    cfg = RemoteTierConfig(endpoints=("127.0.0.1:7470",))   # or load_tiers_config("tiers.toml")
    with TieredEngine.connect(edge, cfg) as tiers:
        d = tiers.predict("AAPL", quote, priority="critical", budget_s=800e-6)
        d.tier, d.reason, d.output("p_up")          # "remote", "remote_used", 0.53
        tiers.statistics()["remote_skipped_budget"]

``AsyncTieredEngine`` is the same on an event loop (``await tiers.predict(...)``): other
decisions proceed while a remote call is out.  The rule (``rule``; docs/tiers.md): the edge
decides first; the remote is called only when its breaker allows and its round-trip estimate
plus a margin fits in the remaining budget, and its answer is used only when it arrives by
the deadline.  Every outcome is counted.
"""

from tailguard.tiers.config import RemoteBreakerSpec, RemoteTierConfig, load_tiers_config
from tailguard.tiers.decision import Tier, TieredDecision, TierReason
from tailguard.tiers.edge import edge_service_dir
from tailguard.tiers.estimate import RoundTripEstimate
from tailguard.tiers.metrics import TiersCollector, render_tiers
from tailguard.tiers.rule import PendingCall, TierRule
from tailguard.tiers.tiered import AsyncRemotePredictor, AsyncTieredEngine, RemotePredictor, TieredEngine

__all__ = [
    "AsyncRemotePredictor",
    "AsyncTieredEngine",
    "PendingCall",
    "RemoteBreakerSpec",
    "RemotePredictor",
    "RemoteTierConfig",
    "RoundTripEstimate",
    "Tier",
    "TierReason",
    "TierRule",
    "TieredDecision",
    "TieredEngine",
    "TiersCollector",
    "edge_service_dir",
    "load_tiers_config",
    "render_tiers",
]
