"""Cache backends that count gets, hits and misses in django-prometheus's `django_cache_*` metrics.

django-prometheus ships such a backend for Redis only on top of the `django_redis` package; these
wrap Django's own backends (Redis in production, local memory in standalone) instead.
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from django_prometheus.cache.metrics import (
    django_cache_get_fail_total,
    django_cache_get_total,
    django_cache_hits_total,
    django_cache_misses_total,
)

_MISSING = object()


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
    backend_label = "redis"

    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        return self._counted_get(super(), key, default, version)

    def get_many(self, keys: Any, version: int | None = None) -> Any:
        return self._counted_get_many(super(), keys, version)


class CountedLocMemCache(_Counted, LocMemCache):
    backend_label = "locmem"

    # Its get_many is the base class's loop over get(): counting get() counts every key once.
    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        return self._counted_get(super(), key, default, version)
