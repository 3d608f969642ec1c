"""The broker chosen by the settings, against the real Redis."""

from __future__ import annotations

import dramatiq
import pytest
import redis

from worker.broker import broker_from_settings, is_in_process
from worker.errors import ConfigurationError
from worker.settings import Settings

# A database of its own, flushed by these tests only.
REDIS_URL = "redis://127.0.0.1:6379/13"


@pytest.fixture
def redis_db() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _send_one(settings: Settings) -> None:
    broker = broker_from_settings(settings)
    try:
        dramatiq.actor(lambda: None, actor_name="noop", queue_name="q", broker=broker)
        broker.enqueue(dramatiq.Message(
            queue_name="q", actor_name="noop", args=(), kwargs={}, options={},
        ))
    finally:
        broker.close()


def test_redis_broker_keys_live_under_the_deployment_prefix(redis_db) -> None:
    # given two deployments sharing one Redis, each with its own prefix
    first = Settings(broker_url=REDIS_URL, esi_redis_prefix="alliance-a:")
    second = Settings(broker_url=REDIS_URL, esi_redis_prefix="alliance-b:")

    # when each sends a message
    _send_one(first)
    _send_one(second)

    # then every broker key is under one of the prefixes, one queue each
    keys = sorted(k.decode() for k in redis_db.keys("*"))
    assert keys and all(k.startswith(("alliance-a:", "alliance-b:")) for k in keys)
    assert redis_db.hlen("alliance-a:dramatiq:q.msgs") == 1
    assert redis_db.hlen("alliance-b:dramatiq:q.msgs") == 1


def test_no_broker_url_is_the_in_process_broker() -> None:
    # given no broker URL, when the broker is chosen, then it is in-process
    broker = broker_from_settings(Settings())
    assert is_in_process(broker)


def test_an_unknown_scheme_names_the_setting() -> None:
    # given a broker URL of a scheme no broker speaks
    settings = Settings(broker_url="kafka://127.0.0.1:9092")

    # when the broker is chosen, then the error names the setting and scheme
    with pytest.raises(ConfigurationError, match="ESI_WORKER_BROKER_URL.*'kafka'"):
        broker_from_settings(settings)
