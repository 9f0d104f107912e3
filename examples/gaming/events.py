"""Synthetic game telemetry: players, matches, engagements, input samples, reports, cheaters.

A ``World`` (fixed by its seed) holds what no feature sees directly: each player's skill and
whether they cheat.  About 6% of players cheat; half of them run an aimbot in every fight,
the other half are *closet* cheaters who switch it on in 30% of their fights.  A fight with
the aimbot on has faster and more regular reactions (about 205 ms, sd 14%, against 260 ms,
sd 25%, for an average honest player), higher accuracy, more headshots and kills, and larger
aim snaps in the input telemetry.  Skilled honest players overlap
the cheaters on accuracy and kill rate but not on reaction regularity or aim snaps, so no
single statistic separates them.  Cheaters are reported more often, and so, less often,
are honest players who had a very good match.

``History`` is a stretch of play: matches of 10 players (5 against 5) lasting 10 minutes,
each player in ~6 fights against the other team, 2 input samples per player, reports
filed in the minute after it.  ``events()`` is the event stream in event-time order; ``decisions`` are
the match ends, where each player's cheat score is asked for, with the request context
(ping, kills and deaths in that match).  Deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
START_NS = 1_700_000_000 * SECOND
MATCH_S = 600
TEAM = 5


@dataclass(frozen=True)
class World:
    """Players and the hidden truth."""

    players: list[str]
    skill: np.ndarray  # (n,) float
    cheater: np.ndarray  # (n,) bool
    cheat_rate: np.ndarray  # (n,) share of fights with the cheat on (0 for honest players)
    ping_ms: np.ndarray  # (n,) typical ping


def make_world(n_players: int = 1200, seed: int = 1, cheater_share: float = 0.06) -> World:
    """A world of ``n_players`` players."""
    rng = np.random.default_rng(seed)
    cheater = rng.random(n_players) < cheater_share
    closet = cheater & (rng.random(n_players) < 0.5)
    rate = np.where(cheater, np.where(closet, 0.3, 1.0), 0.0)
    return World(
        players=[f"p{i:05d}" for i in range(n_players)],
        skill=rng.normal(0.0, 1.0, n_players),
        cheater=cheater,
        cheat_rate=rate,
        ping_ms=rng.lognormal(np.log(40.0), 0.4, n_players),
    )


@dataclass(frozen=True)
class Decisions:
    """One row per (match end, player): when, who, and the request context."""

    ts_ns: np.ndarray  # (D,) int64
    player: np.ndarray  # (D,) player index
    ping_ms: np.ndarray
    kills: np.ndarray
    deaths: np.ndarray


@dataclass(frozen=True)
class History:
    """A stretch of play: the events (time-ordered) and the decisions at match ends."""

    world: World
    event_list: list[dict[str, Any]]
    decisions: Decisions

    def events(self) -> list[dict[str, Any]]:
        """The stream events in event-time order (engagement, input sample, report)."""
        return self.event_list


def generate(world: World, n_matches: int = 2000, *, hours: float = 24.0, seed: int = 0,
             start_ns: int = START_NS) -> History:
    """``n_matches`` matches starting uniformly over ``hours`` hours from ``start_ns``."""
    rng = np.random.default_rng(seed)
    n = len(world.players)
    names = world.players
    starts = np.sort(start_ns + (rng.random(n_matches) * hours * HOUR).astype(np.int64))
    evs: list[tuple[int, int, dict[str, Any]]] = []  # (ts, tie-break, event)
    d_ts: list[int] = []
    d_pl: list[int] = []
    d_ping: list[float] = []
    d_k: list[float] = []
    d_d: list[float] = []
    seq = 0
    skill, rate = world.skill, world.cheat_rate
    for m in range(n_matches):  # generation time only, vectorised per match
        t0 = int(starts[m])
        lobby = rng.choice(n, 2 * TEAM, replace=False)
        # Fights: who (slot in the lobby), against whom (a slot in the other team), when.
        n_f = rng.poisson(6, 2 * TEAM)
        a_slot = np.repeat(np.arange(2 * TEAM), n_f)
        o_slot = np.where(a_slot < TEAM, TEAM, 0) + rng.integers(0, TEAM, len(a_slot))
        p_idx, o_idx = lobby[a_slot], lobby[o_slot]
        t = t0 + rng.integers(0, MATCH_S * SECOND, len(a_slot))
        on = rng.random(len(a_slot)) < rate[p_idx]
        sk = skill[p_idx]
        reaction = np.where(on, rng.lognormal(np.log(205.0), 0.14, len(sk)),
                            rng.lognormal(np.log(260.0 - 25.0 * sk), 0.25))
        acc = np.where(on, rng.beta(8.0, 9.0, len(sk)), rng.beta(4.0 + 1.2 * np.maximum(sk + 2.0, 0.1), 8.0))
        edge = sk + np.where(on, 1.0, 0.0)
        kill = rng.random(len(sk)) < 1.0 / (1.0 + np.exp(-0.8 * (edge - skill[o_idx])))
        head = kill & (rng.random(len(sk)) < np.where(on, 0.4, 0.22 + 0.05 * np.clip(sk, -2, 2)))
        kills = np.bincount(a_slot, weights=kill, minlength=2 * TEAM)
        deaths = np.bincount(a_slot, weights=~kill, minlength=2 * TEAM)
        for row in zip(t.tolist(), p_idx.tolist(), o_idx.tolist(), kill.tolist(), head.tolist(),
                       np.round(acc, 3).tolist(), np.round(reaction).tolist(), strict=True):
            evs.append((row[0], seq, {"ts_ns": row[0], "player": names[row[1]], "opponent": names[row[2]],
                                      "kill": float(row[3]), "headshot": float(row[4]),
                                      "accuracy": row[5], "reaction_ms": row[6]}))
            seq += 1
        # Input telemetry: two samples per player.
        s_slot = np.repeat(np.arange(2 * TEAM), 2)
        s_p = lobby[s_slot]
        ts_s = t0 + rng.integers(0, MATCH_S * SECOND, len(s_slot))
        s_on = rng.random(len(s_slot)) < rate[s_p]
        snap = rng.lognormal(np.log(np.where(s_on, 13.0, 8.0 + skill[s_p])), 0.4)
        in_rate = rng.normal(5.0 + 0.5 * skill[s_p], 1.0)
        for row in zip(ts_s.tolist(), s_p.tolist(), np.round(in_rate, 2).tolist(),
                       np.round(snap, 2).tolist(), strict=True):
            evs.append((row[0], seq, {"ts_ns": row[0], "player": names[row[1]],
                                      "input_rate": row[2], "aim_snap": row[3]}))
            seq += 1
        end = t0 + MATCH_S * SECOND
        kd = kills / (deaths + 1.0)
        for a in range(2 * TEAM):
            p = int(lobby[a])
            foes = lobby[TEAM:] if a < TEAM else lobby[:TEAM]
            for o in foes.tolist():  # does a foe report this player?
                pr = 0.01 + (0.05 if world.cheater[p] else 0.0) + (0.04 if kd[a] > 3.0 else 0.0)
                if rng.random() < pr:
                    t = end + int(rng.integers(1, 60)) * SECOND
                    report = {"ts_ns": t, "player": names[p], "reporter": names[o], "report": 1.0}
                    evs.append((t, seq, report))
                    seq += 1
            d_ts.append(end)
            d_pl.append(p)
            d_ping.append(round(float(world.ping_ms[p] * rng.lognormal(0.0, 0.15)), 1))
            d_k.append(float(kills[a]))
            d_d.append(float(deaths[a]))
    evs.sort(key=lambda e: (e[0], e[1]))
    order = np.argsort(np.array(d_ts, dtype=np.int64), kind="stable")
    dec = Decisions(
        ts_ns=np.array(d_ts, dtype=np.int64)[order],
        player=np.array(d_pl, dtype=np.int64)[order],
        ping_ms=np.array(d_ping)[order],
        kills=np.array(d_k)[order],
        deaths=np.array(d_d)[order],
    )
    return History(world, [e for _, _, e in evs], dec)
