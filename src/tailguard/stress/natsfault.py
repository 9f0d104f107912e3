"""The moving parts of the ``nats-restart`` scenario: a publisher and the ingest worker.

``Publisher`` publishes the target's events to a JetStream stream at a fixed rate, each
message acknowledged by JetStream; while NATS is down it keeps retrying the message it
holds (a publisher that drops what it could not send would lose data on its own side), so
every event it counts as *published* was stored by JetStream.  ``IngestWorker`` runs
``tailguard features ingest`` as a child process (NATS -> the Redis online store the
servers read).  After the run, ``caught_up`` waits until the durable consumer has nothing
pending or unacknowledged; the worker's own statistics (``--json`` on exit) then say which
stream sequence it applied.  Nothing published is lost when the worker applied up to the
last published sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["IngestWorker", "Publisher", "caught_up"]

STREAM = "STRESS"
SUBJECT = "stress.events"
DURABLE = "stress-ingest"


class Publisher:
    """Events to ``SUBJECT`` at ``rate_hz`` messages/s (``per_message`` events each)."""

    def __init__(self, url: str, events: Callable[[int], list[dict[str, Any]]], *, rate_hz: float = 20.0,
                 per_message: int = 4) -> None:
        self.url = url
        self.events = events
        self.rate_hz = rate_hz
        self.per_message = per_message
        self.published = 0  # messages acknowledged by JetStream
        self.events_published = 0
        self.retries = 0
        self.connection_errors = 0
        self.last_seq = 0
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    def stop_threadsafe(self) -> None:
        """Stop after the message in hand is stored (from any thread)."""
        self._stopped = True
        loop, ev = self._loop, self._stop
        if loop is not None and ev is not None:
            loop.call_soon_threadsafe(ev.set)

    async def run(self) -> None:
        """Publish until ``stop_threadsafe`` (see the module docstring), on the running loop."""
        import nats

        self._loop = asyncio.get_running_loop()
        self._stop = stop = asyncio.Event()
        if self._stopped:
            return
        from nats.js.api import StorageType, StreamConfig

        enc = msgspec.msgpack.Encoder()
        async def quiet(exc: Exception) -> None:  # the outage is the point: count, do not print
            self.connection_errors += 1

        nc = await nats.connect(self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.05,
                                allow_reconnect=True, error_cb=quiet)
        try:
            js = nc.jetstream(timeout=1.0)
            try:
                await js.stream_info(STREAM)
            except Exception:
                await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE))
            loop = asyncio.get_running_loop()
            next_t = loop.time()
            while not stop.is_set():
                body = enc.encode(self.events(self.per_message))
                while True:  # hold the message until JetStream has stored it
                    try:
                        ack = await js.publish(SUBJECT, body, timeout=1.0)
                        break
                    except Exception:
                        self.retries += 1
                        await asyncio.sleep(0.05)
                self.published += 1
                self.events_published += self.per_message
                self.last_seq = int(ack.seq)
                next_t += 1.0 / self.rate_hz
                delay = next_t - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
        finally:
            await nc.close()


async def caught_up(url: str, timeout_s: float = 20.0, *, at_least_seq: int = 0,
                    drained: bool = True) -> dict[str, Any]:
    """Wait until the durable consumer exists, has acknowledged up to ``at_least_seq`` and (with
    ``drained``) has nothing pending or unacknowledged; its state (as last seen, also on
    timeout)."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=2.0)
        end = time.monotonic() + timeout_s
        state: dict[str, Any] = {"missing": True}
        while True:
            try:
                info = await js.consumer_info(STREAM, DURABLE)
            except Exception:  # not created yet (the worker is starting): wait for it
                if time.monotonic() > end:
                    return state
                await asyncio.sleep(0.05)
                continue
            state = {"num_pending": info.num_pending, "num_ack_pending": info.num_ack_pending,
                     "delivered_stream_seq": info.delivered.stream_seq if info.delivered else 0,
                     "ack_floor_stream_seq": info.ack_floor.stream_seq if info.ack_floor else 0}
            floor = state["ack_floor_stream_seq"]
            idle = info.num_pending == 0 and info.num_ack_pending == 0
            if (floor >= at_least_seq and (idle or not drained)) or time.monotonic() > end:
                return state
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


class IngestWorker:
    """``tailguard features ingest`` as a child process (stats read on ``stop``)."""

    def __init__(self, service_dir: Path, nats_url: str, redis_url: str, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.cmd = [sys.executable, "-m", "tailguard", "features", "ingest", str(service_dir),
                    "--nats", nats_url, "--stream", STREAM, "--subject", SUBJECT, "--durable", DURABLE,
                    "--store", redis_url, "--checkpoint", str(workdir / "ingest.ckpt"), "--json"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.stats: dict[str, Any] = {}

    def start(self) -> None:
        """Start the worker."""
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE,
                                     stderr=(self.workdir / "ingest.log").open("ab"))

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait, and return the statistics it printed."""
        if self.proc is None:
            return self.stats
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("{")]
        self.stats = json.loads(lines[-1]) if lines else {"error": "no statistics printed",
                                                          "returncode": self.proc.returncode}
        self.proc = None
        return self.stats
