"""The ESI client: django-esi's bravado API with caching, pages and retries."""

from __future__ import annotations

from .cache import MemoryCache, RedisCache, cache_from_settings
from .client import EsiClientProvider, esi_client_factory
from .futures import CachingHttpFuture

__all__ = [
    "CachingHttpFuture",
    "EsiClientProvider",
    "MemoryCache",
    "RedisCache",
    "cache_from_settings",
    "esi_client_factory",
]
