"""Edge/remote tiers: the decision rule on a fake clock with a fake remote (budget fits or not,
late, error, fallback, breaker opening, short-circuit and half-open recovery), the round-trip
estimate, the config file, the edge service copy, metrics, and one run against a real
``tailguard serve`` of the toy service."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from toyservice import CTX

from tailguard import Flag, Service, SpecError, load_service
from tailguard.client import Rejected, Result, Timeout, Unavailable
from tailguard.resilience.breaker import BreakerState
from tailguard.schema.wire import Status
from tailguard.serve.process import ServerProcess
from tailguard.spec import load_spec
from tailguard.testing import FakeClock
from tailguard.tiers import (
    AsyncTieredEngine,
    RemoteBreakerSpec,
    RemoteTierConfig,
    RoundTripEstimate,
    Tier,
    TieredEngine,
    TierReason,
    edge_service_dir,
    load_tiers_config,
    render_tiers,
)

US = 1_000
REMOTE_P = 0.875


def result(flags: Flag = Flag.NONE, p: float = REMOTE_P) -> Result:
    return Result({"p": p}, "primary@1", "fast" if flags & Flag.FALLBACK else "primary", flags, Status.OK,
                  {}, "fake:1")


class FakeRemote:
    """A remote tier whose call takes ``delay_s`` of fake time, then answers or raises."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delay_s = 100e-6
        self.answer: Callable[[], Result] = result
        self.calls: list[dict[str, Any]] = []

    def predict(self, keys: Any, context: Any = None, *, priority: str | None = None,
                budget_us: int | None = None, timeout_s: float | None = None) -> Result:
        self.calls.append({"priority": priority, "budget_us": budget_us, "timeout_s": timeout_s})
        self.clock.advance(self.delay_s)
        return self.answer()


def raising(exc: Exception) -> Callable[[], Result]:
    def answer() -> Result:
        raise exc

    return answer


@pytest.fixture
def remote(clock: FakeClock) -> FakeRemote:
    return FakeRemote(clock)


def tiers(service: Service, remote: FakeRemote, clock: FakeClock, **kw: Any) -> TieredEngine:
    breaker = kw.pop("breaker", RemoteBreakerSpec(failures=3, window=0, open_s=1.0, max_open_s=8.0))
    cfg = RemoteTierConfig(**{"prior_s": 200e-6, "margin_s": 50e-6, "min_samples": 4, **kw}, breaker=breaker)
    return TieredEngine(service, remote, cfg, clock=clock)


# -- the decision rule ----------------------------------------------------------------------------------
def test_remote_answers_when_its_estimate_fits(
    service: Service, remote: FakeRemote, clock: FakeClock
) -> None:
    t = tiers(service, remote, clock)
    d = t.predict("a", CTX, priority="critical")  # 500 us class budget, 200 + 50 fits
    assert (d.tier, d.reason) == (Tier.REMOTE, TierReason.REMOTE_USED)
    assert d.output("p") == REMOTE_P and d.outputs == {"p": REMOTE_P}
    assert d.rung == "primary" and d.model_version == "primary@1"
    assert d.edge.rung == "primary"  # the toy service's own ladder: the edge answered too
    assert d.remote_ns == 100 * US and d.budget_ns == 500 * US
    # The server is given the remaining budget less the margin; the client waits the remaining budget.
    assert remote.calls == [{"priority": "critical", "budget_us": 450, "timeout_s": 500e-6}]
    s = t.statistics()
    assert (s["remote_used"], s["remote_started"], s["remote_answered"], s["edge_answered"]) == (1, 1, 1, 0)


def test_remote_is_not_called_when_the_budget_is_too_tight(
    service: Service, remote: FakeRemote, clock: FakeClock
) -> None:
    t = tiers(service, remote, clock)
    d = t.predict("a", CTX, priority="critical", budget_s=240e-6)  # 200 + 50 > 240
    assert (d.tier, d.reason) == (Tier.EDGE, TierReason.REMOTE_SKIPPED_BUDGET)
    assert remote.calls == [] and d.remote is None and d.estimate_ns == 200 * US
    assert d.output("p") == d.edge.output("p")
    assert t.statistics()["remote_skipped_budget"] == 1 and t.statistics()["remote_started"] == 0


def test_a_budget_longer_than_the_class_budget_does_not_stretch_it(
    service: Service, remote: FakeRemote, clock: FakeClock
) -> None:
    t = tiers(service, remote, clock)
    d = t.predict("a", CTX, priority="critical", budget_s=1.0)
    assert d.budget_ns == 500 * US and remote.calls[0]["timeout_s"] == 500e-6


def test_a_reply_after_the_deadline_is_dropped_and_counted_late(
    service: Service, remote: FakeRemote, clock: FakeClock
) -> None:
    t = tiers(service, remote, clock)
    remote.delay_s = 600e-6  # the reply comes, but past the 500 us deadline
    d = t.predict("a", CTX, priority="critical")
    assert (d.tier, d.reason) == (Tier.EDGE, TierReason.REMOTE_LATE)
    assert d.remote is not None and d.output("p") == d.edge.output("p")
    s = t.statistics()
    assert (s["remote_late"], s["remote_late_replies"], s["remote_timeouts"]) == (1, 1, 0)
    assert t.breaker.failures == 1


def test_a_client_timeout_is_late_and_teaches_the_estimate(
    service: Service, remote: FakeRemote, clock: FakeClock
) -> None:
    t = tiers(service, remote, clock, min_samples=1)
    remote.delay_s = 500e-6
    remote.answer = raising(Timeout("no reply"))
    d = t.predict("a", CTX, priority="critical")
    assert d.reason is TierReason.REMOTE_LATE and d.remote is None
    assert t.statistics()["remote_timeouts"] == 1
    # The wait (a lower bound of the round trip) now sets the estimate: the next one is skipped.
    assert t.predict("a", CTX, priority="critical").reason is TierReason.REMOTE_SKIPPED_BUDGET
    assert len(remote.calls) == 1


@pytest.mark.parametrize(("exc", "code"), [(Unavailable("down"), "unavailable"),
                                           (RuntimeError("bug"), "RuntimeError")])
def test_remote_errors_are_counted_never_raised(
    service: Service, remote: FakeRemote, clock: FakeClock, exc: Exception, code: str
) -> None:
    t = tiers(service, remote, clock)
    remote.answer = raising(exc)
    d = t.predict("a", CTX, priority="critical")
    assert (d.tier, d.reason) == (Tier.EDGE, TierReason.REMOTE_ERROR)
    assert t.statistics()["remote_errors"] == {code: 1}
    assert t.breaker.failures == 1


def test_a_prompt_refusal_for_lack_of_time_is_an_error_but_not_a_breaker_failure(
    service: Service, remote: FakeRemote, clock: FakeClock
) -> None:
    t = tiers(service, remote, clock)
    remote.answer = raising(Rejected("too late", status=Status.PREDICTED_LATE))
    for _ in range(5):
        assert t.predict("a", CTX, priority="critical").reason is TierReason.REMOTE_ERROR
    assert t.statistics()["remote_errors"] == {"predicted_late": 5}
    assert t.breaker.state is BreakerState.CLOSED and t.breaker.failures == 0
    remote.answer = raising(Rejected("full", status=Status.QUEUE_FULL))  # overload: back off
    for _ in range(3):
        t.predict("a", CTX, priority="critical")
    assert t.breaker.state is BreakerState.OPEN


def test_a_fallback_reply_keeps_the_edge_answer_unless_accepted(
    service: Service, remote: FakeRemote, clock: FakeClock
) -> None:
    remote.answer = lambda: result(Flag.FALLBACK)
    t = tiers(service, remote, clock)
    d = t.predict("a", CTX, priority="critical")
    assert (d.tier, d.reason, d.rung) == (Tier.EDGE, TierReason.REMOTE_FALLBACK, d.edge.rung)
    assert t.breaker.failures == 0  # the server answered: it is alive
    accepting = tiers(service, remote, clock, accept_fallback=True)
    assert accepting.predict("a", CTX, priority="critical").tier is Tier.REMOTE


# -- the breaker ---------------------------------------------------------------------------------------
def test_failures_open_the_breaker_and_it_short_circuits_without_waiting(
    service: Service, remote: FakeRemote, clock: FakeClock
) -> None:
    t = tiers(service, remote, clock)
    remote.answer = raising(Unavailable("down"))
    for _ in range(3):
        assert t.predict("a", CTX, priority="critical").reason is TierReason.REMOTE_ERROR
    assert t.breaker.state is BreakerState.OPEN
    before = clock.now_ns()
    d = t.predict("a", CTX, priority="critical")
    assert (d.tier, d.reason) == (Tier.EDGE, TierReason.REMOTE_BREAKER_OPEN)
    assert clock.now_ns() == before and d.elapsed_ns == 0  # no call, no wait
    assert len(remote.calls) == 3
    s = t.statistics()
    assert s["remote_breaker_open"] == 1 and s["breaker"]["short_circuited"] == 1


def test_half_open_trial_success_closes_the_breaker(
    service: Service, remote: FakeRemote, clock: FakeClock
) -> None:
    t = tiers(service, remote, clock)
    remote.answer = raising(Unavailable("down"))
    for _ in range(3):
        t.predict("a", CTX, priority="critical")
    clock.advance(1.0)  # the open period has passed: the next call is a trial
    remote.answer = result
    d = t.predict("a", CTX, priority="critical")
    assert d.reason is TierReason.REMOTE_USED
    assert t.breaker.state is BreakerState.CLOSED


def test_a_failed_trial_reopens_for_longer(service: Service, remote: FakeRemote, clock: FakeClock) -> None:
    t = tiers(service, remote, clock)
    remote.answer = raising(Unavailable("down"))
    for _ in range(3):
        t.predict("a", CTX, priority="critical")
    clock.advance(1.0)
    assert t.predict("a", CTX, priority="critical").reason is TierReason.REMOTE_ERROR  # the trial
    assert t.breaker.state is BreakerState.OPEN and t.breaker.open_period_s == 2.0
    clock.advance(1.0)
    assert t.predict("a", CTX, priority="critical").reason is TierReason.REMOTE_BREAKER_OPEN


def test_a_trial_permit_is_handed_back_when_the_budget_does_not_fit(
    service: Service, remote: FakeRemote, clock: FakeClock
) -> None:
    t = tiers(service, remote, clock)
    remote.answer = raising(Unavailable("down"))
    for _ in range(3):
        t.predict("a", CTX, priority="critical")
    clock.advance(1.0)
    skipped = t.predict("a", CTX, priority="critical", budget_s=100e-6)
    assert skipped.reason is TierReason.REMOTE_SKIPPED_BUDGET
    remote.answer = result
    assert t.predict("a", CTX, priority="critical").reason is TierReason.REMOTE_USED  # the permit was back


# -- the asyncio engine ------------------------------------------------------------------------------------
class GatedRemote:
    """An async remote whose calls wait for ``gate`` (set by the test), then answer."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = 0

    async def predict(self, keys: Any, context: Any = None, *, priority: str | None = None,
                      budget_us: int | None = None, timeout_s: float | None = None) -> Result:
        self.started += 1
        await self.gate.wait()
        return result()


def test_async_engine_decides_other_requests_while_a_remote_call_is_out(
    service: Service, clock: FakeClock
) -> None:
    async def scenario() -> tuple[Any, Any, bool]:
        remote = GatedRemote()
        t = AsyncTieredEngine(service, remote, RemoteTierConfig(prior_s=200e-6, margin_s=50e-6), clock=clock)
        slow = asyncio.ensure_future(t.predict("a", CTX, priority="critical"))
        await asyncio.sleep(0)  # the edge decided and the remote call is out
        assert remote.started == 1 and not slow.done()
        tight = await t.predict("b", CTX, priority="critical", budget_s=100e-6)  # not blocked by it
        pending = not slow.done()
        remote.gate.set()
        return await slow, tight, pending

    slow, tight, pending = asyncio.run(asyncio.wait_for(scenario(), 15.0))
    assert pending and tight.reason is TierReason.REMOTE_SKIPPED_BUDGET
    assert (slow.tier, slow.reason, slow.output("p")) == (Tier.REMOTE, TierReason.REMOTE_USED, REMOTE_P)


def test_async_engine_counts_a_remote_error_and_does_not_raise(service: Service, clock: FakeClock) -> None:
    class Down:
        async def predict(self, *args: Any, **kw: Any) -> Result:
            raise Unavailable("down")

    async def scenario() -> Any:
        t = AsyncTieredEngine(service, Down(), clock=clock)
        return await t.predict("a", CTX, priority="normal"), t.statistics()  # 2 ms: the default prior fits

    d, stats = asyncio.run(scenario())
    assert d.reason is TierReason.REMOTE_ERROR and stats["remote_errors"] == {"unavailable": 1}


def test_a_cancelled_trial_call_hands_its_permit_back(service: Service, clock: FakeClock) -> None:
    async def scenario() -> Any:
        remote = GatedRemote()
        breaker = RemoteBreakerSpec(failures=1, window=0, open_s=1.0, max_open_s=8.0)
        t = AsyncTieredEngine(service, remote, RemoteTierConfig(prior_s=200e-6, breaker=breaker), clock=clock)
        t.breaker.failure(t.breaker.now())  # open
        clock.advance(1.0)  # the next call is the half-open trial
        trial = asyncio.ensure_future(t.predict("a", CTX, priority="critical"))
        await asyncio.sleep(0)
        assert remote.started == 1
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        remote.gate.set()
        return await t.predict("a", CTX, priority="critical")  # a new trial may go out

    d = asyncio.run(asyncio.wait_for(scenario(), 15.0))
    assert d.reason is TierReason.REMOTE_USED


# -- the estimate ----------------------------------------------------------------------------------------
def test_estimate_is_the_prior_until_enough_samples_then_the_window_quantile() -> None:
    e = RoundTripEstimate(200e-6, quantile=0.5, window=4, min_samples=3, max_age_s=0)
    assert e.estimate_ns(0) == 200 * US
    e.observe(100 * US, 1)
    assert e.estimate_ns(1) == 200 * US  # the prior stays the floor with few samples
    e.observe(300 * US, 2)
    assert e.estimate_ns(2) == 300 * US  # ...but a slower sample raises it
    e.observe(50 * US, 3)
    assert e.estimate_ns(3) == 100 * US  # median of 50, 100, 300
    for i in range(4):
        e.observe(10 * US, 4 + i)  # the window keeps the last four
    assert e.estimate_ns(9) == 10 * US and len(e) == 4


def test_estimate_forgets_old_round_trips() -> None:
    e = RoundTripEstimate(200e-6, window=8, min_samples=1, max_age_s=1.0)
    e.observe(900 * US, 1_000_000_000)
    assert e.estimate_ns(1_500_000_000) == 900 * US
    assert e.estimate_ns(2_000_000_001) == 200 * US and len(e) == 0


def test_p99_of_a_full_window_ignores_one_outlier_in_a_hundred_and_one() -> None:
    e = RoundTripEstimate(0.0, quantile=0.99, window=200, min_samples=10, max_age_s=0)
    for i in range(100):
        e.observe(100 * US + i, i)
    e.observe(5_000 * US, 200)
    assert e.estimate_ns(201) == 100 * US + 99


# -- config, edge copy, metrics ------------------------------------------------------------------------------
def test_tiers_file_reads_durations_and_breaker(tmp_path: Path) -> None:
    (tmp_path / "tiers.toml").write_text(
        '[remote]\nendpoints = ["127.0.0.1:1"]\nprior = "300us"\nmargin = "20us"\n'
        '[remote.breaker]\nfailures = 2\nopen = "250ms"\n'
    )
    cfg = load_tiers_config(tmp_path)
    assert cfg.endpoints == ("127.0.0.1:1",) and cfg.prior_s == 300e-6
    assert cfg.margin_s == pytest.approx(20e-6)
    assert cfg.breaker.breaker_config().failures == 2 and cfg.breaker.breaker_config().open_s == 0.25


@pytest.mark.parametrize(("text", "path"), [('[remote]\nprior = "fast"\n', "$.remote.prior"),
                                            ("[remote]\nquantile = 1.5\n", "$.remote"),
                                            ("[remote]\nmystery = 1\n", "$.remote")])
def test_tiers_file_errors_name_the_field(tmp_path: Path, text: str, path: str) -> None:
    f = tmp_path / "tiers.toml"
    f.write_text(text)
    with pytest.raises(SpecError) as info:
        load_tiers_config(f)
    assert info.value.path == path


def test_edge_service_dir_starts_the_ladder_at_the_chosen_rung(toy_dir: Path, tmp_path: Path) -> None:
    edge = edge_service_dir(toy_dir, tmp_path / "edge", first_rung="fast")
    spec = load_spec(edge)
    assert [r.name for r in spec.ladder] == ["fast", "last_good", "default"]
    assert [m.name for m in spec.models] == ["fast"]
    svc = load_service(edge, freeze_gc=False)
    assert svc.engine.predict("a", CTX).rung == "fast"
    with pytest.raises(SpecError):
        edge_service_dir(toy_dir, tmp_path / "bad", first_rung="last_good")


def test_metrics_export_counts_per_tier_and_reason(
    service: Service, remote: FakeRemote, clock: FakeClock
) -> None:
    pytest.importorskip("prometheus_client")
    t = tiers(service, remote, clock)
    t.predict("a", CTX, priority="critical")
    t.predict("a", CTX, priority="critical", budget_s=100e-6)
    text = render_tiers(t).decode()
    assert 'tailguard_tier_decisions_total{reason="remote_used",tier="remote"} 1.0' in text
    assert 'tailguard_tier_decisions_total{reason="remote_skipped_budget",tier="edge"} 1.0' in text
    assert "tailguard_tier_remote_started_total 1.0" in text
    assert "tailguard_tier_breaker_state 0.0" in text


# -- a real remote tier -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_server(toy_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0") as proc:
        yield proc


def test_against_a_real_server(toy_dir: Path, tmp_path: Path, toy_server: ServerProcess) -> None:
    assert toy_server.tcp is not None
    edge = load_service(edge_service_dir(toy_dir, tmp_path / "edge", first_rung="fast"), freeze_gc=False)
    cfg = RemoteTierConfig(endpoints=(toy_server.tcp,), prior_s=1e-3,
                           breaker=RemoteBreakerSpec(failures=2, window=0, open_s=60.0, max_open_s=60.0))
    with TieredEngine.connect(edge, cfg) as t:
        tight = t.predict("a", CTX, priority="critical", budget_s=50e-6)
        assert tight.reason is TierReason.REMOTE_SKIPPED_BUDGET
        used = [d for d in (t.predict("a", CTX, priority="bulk") for _ in range(5)) if d.tier is Tier.REMOTE]
        assert used, t.statistics()  # a 20 ms budget: the loopback server answers in time
        for d in used:
            assert d.rung == "primary" and d.edge.rung == "fast" and d.remote_ns <= d.budget_ns
        assert t.statistics()["remote_started"] == 5

        async def on_a_loop() -> list[Any]:
            async with await AsyncTieredEngine.connect(edge, cfg) as at:
                return list(await asyncio.gather(*(at.predict("a", CTX, priority="bulk") for _ in range(5))))

        concurrent = asyncio.run(asyncio.wait_for(on_a_loop(), 30.0))
        assert any(d.tier is Tier.REMOTE for d in concurrent), [d.reason for d in concurrent]
        toy_server.close()  # the remote tier goes away: errors, then the breaker opens
        reasons = [t.predict("a", CTX, priority="bulk").reason for _ in range(4)]
        assert reasons[-1] is TierReason.REMOTE_BREAKER_OPEN
        assert t.breaker.state is BreakerState.OPEN
        assert all(r in (TierReason.REMOTE_ERROR, TierReason.REMOTE_LATE, TierReason.REMOTE_BREAKER_OPEN)
                   for r in reasons)
