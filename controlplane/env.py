"""Typed readers for environment variables.

Every setting of the product comes from the environment. These helpers fail loudly (with the
variable's name and the offending value) instead of guessing, so a typo in a deployment stops
the process at start instead of surfacing hours later as odd behaviour.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from ops.configuration import ConfigError

__all__ = ["ConfigError"]  # raised by every helper here; defined below the apps (ops.configuration)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    source = os.environ if environ is None else environ
    return source.get(name, default)


def env_choice(
    name: str, default: str, choices: tuple[str, ...], environ: Mapping[str, str] | None = None
) -> str:
    """One of `choices` (case and surrounding blanks ignored); anything else stops the process."""
    value = env_str(name, default, environ).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_bool(name: str, default: bool, environ: Mapping[str, str] | None = None) -> bool:
    source = os.environ if environ is None else environ
    raw = source.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be a boolean (true/false), got {raw!r}")


N = TypeVar("N", int, float)


def _env_number(
    name: str,
    default: N,
    environ: Mapping[str, str] | None,
    parse: Callable[[str], N],
    kind: str,
    minimum: N | None,
    maximum: N | None,
) -> N:
    source = os.environ if environ is None else environ
    raw = source.get(name)
    if raw is None or raw.strip() == "":
        value = default
    else:
        try:
            value = parse(raw.strip())
        except ValueError:
            raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return value


def env_int(
    name: str,
    default: int,
    environ: Mapping[str, str] | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    return _env_number(name, default, environ, int, "an integer", minimum, maximum)


def env_float(
    name: str,
    default: float,
    environ: Mapping[str, str] | None = None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    return _env_number(name, default, environ, float, "a number", minimum, maximum)


def env_list(name: str, default: list[str], environ: Mapping[str, str] | None = None) -> list[str]:
    source = os.environ if environ is None else environ
    raw = source.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_path(name: str, default: Path, environ: Mapping[str, str] | None = None) -> Path:
    source = os.environ if environ is None else environ
    raw = source.get(name)
    if raw is None or raw.strip() == "":
        return default
    return Path(raw).expanduser().resolve()


@dataclass(frozen=True)
class DatabaseConfig:
    engine: str
    name: str
    user: str = ""
    password: str = ""
    host: str = ""
    port: str = ""
    options: dict[str, str] | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.engine == "django.db.backends.sqlite3"


_PG_SCHEMES = {"postgres", "postgresql", "pgsql"}


def parse_database_url(url: str) -> DatabaseConfig:
    """Parse `postgres://user:pass@host:port/name?opt=v` or `sqlite:///abs/path.db`.

    Pure so it can be tested on its own; settings turn the result into Django's dict.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        # sqlite:////abs/path -> "/abs/path"; sqlite:///rel/path -> "rel/path"
        # sqlite:////abs/path.db is absolute, sqlite:///rel/path.db is relative: drop one slash.
        path = unquote(url[len("sqlite://") :])
        path = path[1:] if path.startswith("/") else path
        if path in {"", ":memory:"}:
            raise ConfigError("DATABASE_URL: sqlite needs a file path, e.g. sqlite:////srv/cp/db.sqlite3")
        return DatabaseConfig(engine="django.db.backends.sqlite3", name=path)
    if scheme in _PG_SCHEMES:
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ConfigError("DATABASE_URL: a database name is required, e.g. postgres://u@h:5432/db")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"DATABASE_URL: invalid port in {url!r}") from None
        options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        return DatabaseConfig(
            engine="django.db.backends.postgresql",
            name=name,
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            host=parts.hostname or "",
            port=str(port) if port else "",
            options=options or None,
        )
    raise ConfigError(f"DATABASE_URL: unsupported scheme {parts.scheme!r} (use postgres:// or sqlite://)")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def channel_prefix(redis_url: str, environ: Mapping[str, str] | None = None) -> str:
    """The channel layer's key prefix: CONTROLPLANE_CHANNEL_PREFIX, by default "asgi" plus the
    Redis database number when one other than 0 is named. Redis pub/sub ignores database numbers,
    so two control planes sharing one Redis server on databases 14 and 15 would otherwise receive
    each other's frames."""
    number = urlsplit(redis_url).path.strip("/") or "0"
    return env_str("CONTROLPLANE_CHANNEL_PREFIX", "asgi" if number == "0" else f"asgi-db{number}", environ)


def parse_networks(name: str, items: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) from a comma-list setting; a bad one stops the process."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not an IP network (e.g. 10.0.0.0/8)") from None
    return tuple(networks)
