"""The dramatiq broker chosen by the settings."""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import default_middleware

from .errors import ConfigurationError
from .settings import Settings

log = logging.getLogger(__name__)


def broker_from_settings(settings: Settings) -> dramatiq.Broker:
    """An in-process broker without a URL; Redis or RabbitMQ by URL scheme.

    On Redis the broker's keys live under ``ESI_WORKER_ESI_REDIS_PREFIX``
    (``esi-worker:dramatiq:...`` by default), so deployments sharing one
    Redis keep their queues apart as they keep their caches apart; on
    RabbitMQ a deployment is kept apart by its virtual host.

    :raises ConfigurationError: for a URL scheme no broker speaks.
    """
    url = settings.broker_url
    middleware = [m() for m in default_middleware]
    if not url:
        log.info("no broker URL: scheduler and workers share this process")
        return StubBroker(middleware=middleware)

    scheme = url.split(":", 1)[0].lower()
    if scheme in {"redis", "rediss", "unix"}:
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(
            url=url,
            middleware=middleware,
            namespace=settings.esi_redis_prefix + "dramatiq",
        )
    if scheme in {"amqp", "amqps"}:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url, middleware=middleware)
    raise ConfigurationError(
        f"ESI_WORKER_BROKER_URL: unsupported scheme {scheme!r} "
        "(use redis://, rediss:// or amqp://)"
    )


def is_in_process(broker: dramatiq.Broker) -> bool:
    """True when messages never leave this process."""
    return isinstance(broker, StubBroker)
