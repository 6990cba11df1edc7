"""Cache backends that count gets, hits and misses in django-prometheus's `django_cache_*` metrics.

django-prometheus ships such a backend for Redis only on top of the `django_redis` package; these
wrap Django's own backends (Redis in production, local memory in standalone) instead.
"""

from __future__ import annotations

from typing import Any

import structlog
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from django_prometheus.cache.metrics import (
    django_cache_get_fail_total,
    django_cache_get_total,
    django_cache_hits_total,
    django_cache_misses_total,
)
from redis.exceptions import RedisError

_MISSING = object()
log = structlog.get_logger(__name__)


class _Counted:
    backend_label = ""

    def _count(self, asked: int, found: int) -> None:
        django_cache_get_total.labels(backend=self.backend_label).inc(asked)
        django_cache_hits_total.labels(backend=self.backend_label).inc(found)
        django_cache_misses_total.labels(backend=self.backend_label).inc(asked - found)

    def _counted_get(self, parent: Any, key: str, default: Any, version: int | None) -> Any:
        try:
            value = parent.get(key, _MISSING, version)
        except Exception:
            django_cache_get_fail_total.labels(backend=self.backend_label).inc()
            raise
        self._count(1, value is not _MISSING)
        return default if value is _MISSING else value

    def _counted_get_many(self, parent: Any, keys: Any, version: int | None) -> Any:
        keys = list(keys)
        try:
            found = parent.get_many(keys, version)
        except Exception:
            django_cache_get_fail_total.labels(backend=self.backend_label).inc()
            raise
        self._count(len(keys), len(found))
        return found


class CountedRedisCache(_Counted, RedisCache):
    """Fails open: with Redis down a read is a miss and a write is skipped (logged), so rate
    limits stop counting and cached charts are recomputed, but no request fails because of the
    cache. Redis carries nothing the product cannot lose."""

    backend_label = "redis"

    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        try:
            return self._counted_get(super(), key, default, version)
        except RedisError as error:
            _unavailable("get", error)
            return default

    def get_many(self, keys: Any, version: int | None = None) -> Any:
        try:
            return self._counted_get_many(super(), keys, version)
        except RedisError as error:
            _unavailable("get_many", error)
            return {}

    def set(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        try:
            super().set(key, value, timeout, version)
        except RedisError as error:
            _unavailable("set", error)

    def add(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        try:
            return bool(super().add(key, value, timeout, version))
        except RedisError as error:
            _unavailable("add", error)
            return False

    def set_many(self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> list[Any]:
        try:
            return list(super().set_many(data, timeout, version))
        except RedisError as error:
            _unavailable("set_many", error)
            return list(data)

    def delete(self, key: str, version: int | None = None) -> bool:
        try:
            return bool(super().delete(key, version))
        except RedisError as error:
            _unavailable("delete", error)
            return False


def _unavailable(operation: str, error: Exception) -> None:
    log.warning("cache_unavailable", operation=operation, error=f"{error.__class__.__name__}: {error}"[:200])


class CountedLocMemCache(_Counted, LocMemCache):
    backend_label = "locmem"

    # Its get_many is the base class's loop over get(): counting get() counts every key once.
    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        return self._counted_get(super(), key, default, version)
