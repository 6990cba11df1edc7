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


@dataclass(frozen=True)
class StorageConfig:
    """Where artifacts and checkpoints live (runs/blobstore.py): a local directory or a bucket."""

    kind: str  # "local" or "s3"
    root: Path  # the local store's directory (also ARTIFACTS_DIR)
    bucket: str = ""
    prefix: str = ""  # "" or ends with "/"
    presigned_downloads: bool = False
    presigned_seconds: int = 300
    checkpoints_keep: int = 0  # 0: keep every checkpoint

    @property
    def is_s3(self) -> bool:
        return self.kind == "s3"


def storage_config(default_root: Path, environ: Mapping[str, str] | None = None) -> StorageConfig:
    """CONTROLPLANE_STORAGE_URL: empty (a local directory, CONTROLPLANE_ARTIFACTS_DIR), file:///dir
    or s3://bucket/prefix; the S3 client reads the standard AWS variables itself (AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, or an instance role)."""
    url = env_str("CONTROLPLANE_STORAGE_URL", "", environ).strip()
    root = env_path("CONTROLPLANE_ARTIFACTS_DIR", default_root, environ)
    parts = urlsplit(url)
    if url and parts.scheme == "file" and parts.path.startswith("/") and not parts.netloc:
        kind, root, bucket, prefix = "local", Path(unquote(parts.path)).resolve(), "", ""
    elif url and parts.scheme == "s3" and parts.netloc and not parts.query:
        kind, bucket = "s3", parts.netloc
        prefix = parts.path.strip("/") + "/" if parts.path.strip("/") else ""
    elif url:
        raise ConfigError(f"CONTROLPLANE_STORAGE_URL must be file:///dir or s3://bucket/prefix, got {url!r}")
    else:
        kind, bucket, prefix = "local", "", ""
    presigned = env_bool("CONTROLPLANE_STORAGE_PRESIGNED_DOWNLOADS", False, environ)
    if presigned and kind != "s3":
        raise ConfigError("CONTROLPLANE_STORAGE_PRESIGNED_DOWNLOADS needs an s3:// CONTROLPLANE_STORAGE_URL")
    return StorageConfig(
        kind=kind,
        root=root,
        bucket=bucket,
        prefix=prefix,
        presigned_downloads=presigned,
        presigned_seconds=env_int(
            "CONTROLPLANE_STORAGE_PRESIGNED_SECONDS", 300, environ, minimum=10, maximum=604800
        ),
        # A bucket keeps the last 5 by default so it does not grow without bound; a local
        # directory keeps every checkpoint, as it always did.
        checkpoints_keep=env_int(
            "CONTROLPLANE_CHECKPOINTS_KEEP", 5 if kind == "s3" else 0, environ, minimum=0
        ),
    )
