"""The rollout goal state in Redis: one key per service, compare-and-set, change notices.

A ``Goal`` is what every replica of a service should be doing with a rollout: the plan, the
desired phase (``GoalPhase``: active at a stage, promoted, rolled back), who asked and why.
``GoalStore`` keeps it in one Redis hash per service (``tailguard:rollout:<service>:goal``:
fields ``goal`` (JSON), ``revision``, ``epoch``):

* ``put(goal, expect_revision)`` is a compare-and-set done by one Lua script: it writes only
  when the stored revision is still ``expect_revision`` (0: no goal yet), stores revision + 1
  and publishes the new revision on ``tailguard:rollout:<service>:changes``; otherwise it
  raises ``GoalConflict`` (code ``rollout_goal_conflict``) and changes nothing, so two
  operators changing the plan at once cannot both win;
* ``epoch`` is a random token drawn when the key is created: a Redis that restarted empty
  starts counting revisions again under a new epoch, and followers compare (epoch, revision),
  never the revision alone;
* ``watch()`` starts a ``GoalWatch``: a daemon thread that subscribes to the change channel
  and also re-reads the key every ``poll_s`` (a missed message, a dropped connection: a
  replica catches up by revision on reconnect).  The newest goal seen is published in
  ``GoalWatch.latest`` (one reference assignment; readers take no lock).

Redis errors are translated once, here, into ``GoalStoreUnavailable``.

Owner: ``GoalStore`` methods may be called from any thread (redis-py's pool is thread-safe);
``GoalWatch`` owns its thread and its pubsub connection.
"""

from __future__ import annotations

import enum
import secrets
import threading
import time
from collections import deque
from typing import Any

import msgspec

from tailguard.errors import TailguardError
from tailguard.rollout.plan import RolloutPlan

__all__ = [
    "Goal", "GoalConflict", "GoalPhase", "GoalRefused", "GoalStore", "GoalStoreUnavailable", "GoalWatch",
]


class GoalConflict(TailguardError):
    """Someone changed the goal since the revision the writer read; nothing was changed."""

    code = "rollout_goal_conflict"


class GoalRefused(TailguardError):
    """A goal change that does not follow from the current goal (promote with no active
    rollout, a new rollout over an active one); nothing was changed."""

    code = "rollout_goal_refused"


class GoalStoreUnavailable(TailguardError):
    """The goal store (Redis) cannot be reached."""

    code = "rollout_goal_unavailable"


class GoalPhase(enum.Enum):
    """What the replicas should do with the goal's rollout."""

    ACTIVE = "active"  # deployed and started, at least at ``Goal.stage``
    PROMOTED = "promoted"  # the candidate is the stable version
    ROLLED_BACK = "rolled_back"  # 0% to the candidate, flag off


class Goal(msgspec.Struct, frozen=True, kw_only=True):
    """The declared rollout of one service.  ``rollout_id`` names one activation (a new
    ``canary``/``shadow``/``ab`` command draws a new one; ``promote``/``rollback`` keep it);
    ``stage``: the least stage index replicas should be in; ``by``/``reason``: who asked and
    why; ``revision``/``epoch``: set by the store (ignored by ``put``); ``wall_ns``: when it
    was written (wall clock, ns)."""

    service: str
    plan: RolloutPlan
    rollout_id: str
    phase: GoalPhase = GoalPhase.ACTIVE
    stage: int = 0
    by: str = ""
    reason: str = ""
    wall_ns: int = 0
    revision: int = 0
    epoch: str = ""

    def newer_than(self, other: Goal | None) -> bool:
        """Whether this goal should replace ``other`` on a replica (another epoch, or a
        higher revision in the same one)."""
        return other is None or self.epoch != other.epoch or self.revision > other.revision


# KEYS[1]: the goal hash; ARGV: expected revision, goal JSON, fresh epoch, change channel.
_CAS = """
local rev = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
if rev ~= tonumber(ARGV[1]) then
  return {'conflict', tostring(rev), ''}
end
local epoch = redis.call('HGET', KEYS[1], 'epoch') or ARGV[3]
rev = rev + 1
redis.call('HSET', KEYS[1], 'goal', ARGV[2], 'revision', tostring(rev), 'epoch', epoch)
redis.call('PUBLISH', ARGV[4], tostring(rev))
return {'ok', tostring(rev), epoch}
"""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Goal)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class GoalStore:
    """Goals of services in the Redis at ``url`` (see the module docstring); ``timeout_s``:
    socket connect/read timeout of every call."""

    def __init__(self, url: str, *, timeout_s: float = 2.0, prefix: str = "tailguard:rollout") -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._cas = self._redis.register_script(_CAS)

    def key(self, service: str) -> str:
        """The Redis key of ``service``'s goal."""
        return f"{self.prefix}:{service}:goal"

    def channel(self, service: str) -> str:
        """The channel a change of ``service``'s goal is published on."""
        return f"{self.prefix}:{service}:changes"

    def get(self, service: str) -> Goal | None:
        """The stored goal of ``service`` (None: none declared)."""
        import redis

        try:
            raw, rev, epoch = self._redis.hmget(self.key(service), ["goal", "revision", "epoch"])
        except redis.RedisError as exc:
            raise GoalStoreUnavailable(f"goal store {self.url} unavailable: {exc}") from exc
        if raw is None:
            return None
        goal = _decoder.decode(raw)
        return msgspec.structs.replace(goal, revision=int(_text(rev)), epoch=_text(epoch))

    def put(self, goal: Goal, expect_revision: int) -> Goal:
        """Store ``goal`` if the stored revision is still ``expect_revision`` (0: no goal yet);
        the stored goal with its new revision and epoch.  ``GoalConflict`` (nothing changed)
        when another writer got there first."""
        import redis

        body = _encoder.encode(msgspec.structs.replace(goal, revision=0, epoch="",
                                                       wall_ns=goal.wall_ns or time.time_ns()))
        try:
            status, rev, epoch = self._cas(keys=[self.key(goal.service)],
                                           args=[expect_revision, body, secrets.token_hex(8),
                                                 self.channel(goal.service)])
        except redis.RedisError as exc:
            raise GoalStoreUnavailable(f"goal store {self.url} unavailable: {exc}") from exc
        if _text(status) != "ok":
            raise GoalConflict(f"the rollout goal of {goal.service!r} changed: it is at revision "
                               f"{_text(rev)}, this change was made against revision {expect_revision}; "
                               "re-read it (tailguard rollout status) and decide again")
        return msgspec.structs.replace(_decoder.decode(body), revision=int(_text(rev)), epoch=_text(epoch))

    def delete(self, service: str) -> None:
        """Forget ``service``'s goal (tests, decommissioning)."""
        import redis

        try:
            self._redis.delete(self.key(service))
        except redis.RedisError as exc:
            raise GoalStoreUnavailable(f"goal store {self.url} unavailable: {exc}") from exc

    def watch(self, service: str, *, poll_s: float = 0.5, retry_s: float = 0.2) -> GoalWatch:
        """Start following ``service``'s goal on a daemon thread (see ``GoalWatch``)."""
        return GoalWatch(self, service, poll_s=poll_s, retry_s=retry_s)

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()


class GoalWatch:
    """Follows one service's goal on a daemon thread: subscribed to its change channel, and
    re-reading the key every ``poll_s`` s and after every (re)connect; a lost connection is
    retried every ``retry_s`` s.  ``latest``: the newest goal seen (None before one);
    ``changed``: set whenever ``latest`` changes (cleared by the reader); ``submit(goal,
    expect_revision)`` queues a compare-and-set of a phase change to be done on the watch
    thread (a replica's side path never waits for Redis).  ``errors``: failed reads/writes so
    far; ``conflicts``: submitted writes that met a newer goal."""

    def __init__(self, store: GoalStore, service: str, *, poll_s: float = 0.5, retry_s: float = 0.2) -> None:
        self.store = store
        self.service = service
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.latest: Goal | None = None
        self.changed = threading.Event()
        self.errors = 0
        self.conflicts = 0
        self.connected = False
        self._outbox: deque[tuple[Goal, int]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"goal-watch-{service}", daemon=True)
        self._thread.start()

    def submit(self, goal: Goal, expect_revision: int) -> None:
        """Queue ``store.put(goal, expect_revision)`` for the watch thread.  On a conflict, while
        the stored goal is still the same active rollout, the phase, ``by`` and ``reason`` are
        put on top of it (up to three tries); otherwise the write is dropped (counted)."""
        self._outbox.append((goal, expect_revision))

    def _refresh(self) -> None:
        goal = self.store.get(self.service)
        if goal is not None and goal.newer_than(self.latest):
            self.latest = goal
            self.changed.set()

    def _flush(self) -> None:
        while self._outbox:
            goal, expect = self._outbox[0]
            for _ in range(3):
                try:
                    self.store.put(goal, expect)
                    break
                except GoalConflict:
                    # Someone moved the goal on meanwhile (a stage, another rollback): the change
                    # still applies while the goal is the same active rollout; otherwise it is moot.
                    self.conflicts += 1
                    cur = self.store.get(self.service)
                    if cur is None or cur.rollout_id != goal.rollout_id or cur.phase is not GoalPhase.ACTIVE:
                        break
                    goal = msgspec.structs.replace(cur, phase=goal.phase, by=goal.by, reason=goal.reason,
                                                   wall_ns=0)
                    expect = cur.revision
            self._outbox.popleft()

    def _run(self) -> None:
        import redis

        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.store._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(self.store.channel(self.service))
                self.connected = True
                next_poll = 0.0
                while not self._stop.is_set():
                    self._flush()
                    now = time.monotonic()
                    msg = pubsub.get_message(timeout=max(min(self.poll_s, next_poll - now), 0.0))
                    if msg is not None or time.monotonic() >= next_poll:
                        self._refresh()
                        next_poll = time.monotonic() + self.poll_s
            except (redis.RedisError, GoalStoreUnavailable, OSError):
                self.errors += 1
                self.connected = False
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except (redis.RedisError, OSError):
                        self.errors += 1
            self._stop.wait(self.retry_s)  # reconnect pacing; ends at once on close()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (within about ``poll_s``) and wait for it."""
        self._stop.set()
        self._thread.join(timeout_s)
