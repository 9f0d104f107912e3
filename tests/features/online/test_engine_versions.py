"""Two versions of a view in one Redis during a migration: the old service and the new one
(whose models pin a changed ``stats`` view) write and read their own version side by side."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import redis
from services import RedisServer
from toyservice import CTX, feed, render_spec, train_models, write_service

from tailguard import Service, load_service
from tailguard.features.online.protocol import field_name
from tailguard.testing import FakeClock

ONLINE = '\n[online]\nbackend = "redis"\nheartbeat = "1h"\n'


@pytest.fixture(scope="module")
def migrated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy service with a changed field default (a new ``stats`` version) and models pinning it."""
    d = tmp_path_factory.mktemp("migrated")
    write_service(d, spec_text=render_spec().replace("default = -1.0", "default = -2.0") + ONLINE)
    train_models(d)
    return d


def test_two_versions_of_a_view_serve_from_one_redis(
    redis_up: RedisServer, raw: redis.Redis, toy_dir: Path, migrated_dir: Path, tmp_path: Path
) -> None:
    old_dir = Path(shutil.copytree(toy_dir, tmp_path / "old"))
    (old_dir / "service.toml").write_text(render_spec() + ONLINE)
    clock = FakeClock()
    old = load_service(old_dir, clock=clock, freeze_gc=False, online_url=redis_up.url)
    new = load_service(migrated_dir, clock=clock, freeze_gc=False, online_url=redis_up.url)
    services: list[Service] = [old, new]
    try:
        v_old, v_new = old.views["stats"].version, new.views["stats"].version
        assert v_old != v_new
        assert old.models["primary"].manifest.feature_versions["stats"] == v_old
        assert new.models["primary"].manifest.feature_versions["stats"] == v_new
        feed(old, "a", (100.0,))
        feed(new, "a", (50.0,))
        fields = set(raw.hkeys("tg:{toy:item:a}"))
        assert fields == {field_name("stats", v_old), field_name("stats", v_new)}
        for svc, price in ((old, 100.0), (new, 50.0)):
            d = svc.engine.predict("a", CTX)
            assert (d.rung, d.flags, d.model_version) == ("primary", 0, svc.models["primary"].label)
            assert float(svc.engine.last_features(1)[0, 0]) == price  # its own version's value
    finally:
        for svc in services:
            svc.close()
