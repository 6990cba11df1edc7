"""Django settings: every value comes from the environment (see the README's table).

With no environment at all the product runs in standalone mode: SQLite in the data directory,
an in-memory broker and an in-process channel layer. Production sets DATABASE_URL, REDIS_URL and
SECRET_KEY; nothing else changes between the two.
"""

from __future__ import annotations

import re
import secrets
import sys
from pathlib import Path
from typing import Any

from controlplane.code_settings import *  # noqa: F403 - programs and code snapshots (its __all__)
from controlplane.env import (
    ConfigError,
    channel_prefix,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_path,
    env_str,
    parse_database_url,
    parse_networks,
    storage_config,
)
from controlplane.fixed_settings import *  # noqa: F403 - constants, listed in its __all__
from controlplane_web import STATIC_DIR, TEMPLATES_DIR
from ops.logs import LogConfig, configure_logging

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
# ./var of the checkout, or of the working directory when installed from a wheel (where BASE_DIR
# is site-packages): the documented "data in ./var/ unless CONTROLPLANE_DATA_DIR is set".
_HOME = BASE_DIR if (BASE_DIR / "manage.py").is_file() else Path.cwd()
DATA_DIR = env_path("CONTROLPLANE_DATA_DIR", _HOME / "var")
RUNS_DIR = env_path("CONTROLPLANE_RUNS_DIR", DATA_DIR / "runs")
STORAGE = storage_config(DATA_DIR / "artifacts")  # a directory or s3://bucket/prefix: docs/operations.md
ARTIFACTS_DIR = STORAGE.root  # the local store's directory
X_ACCEL_PREFIX = env_str("CONTROLPLANE_X_ACCEL_PREFIX", "")  # nginx sends downloads: runs/apps.py
# Comma-separated Fernet keys, newest first (vault/crypto.py checks them when the app loads).
CONTROLPLANE_SECRETS_KEY = env_str("CONTROLPLANE_SECRETS_KEY", "")

_database_url = env_str("DATABASE_URL", "")
STANDALONE_DEFAULTS = _database_url == ""


def _secret_key() -> str:
    key = env_str("SECRET_KEY", "")
    if key:
        if not DEBUG and (len(key) < 32 or key.startswith("django-insecure")):
            raise ConfigError("SECRET_KEY is too weak for DEBUG=false: use at least 32 random characters")
        return key
    if DEBUG:
        return "django-insecure-debug-only-key-never-use-in-production"
    if STANDALONE_DEFAULTS:
        # Standalone keeps a random key in its data directory so sessions survive restarts.
        key_file = DATA_DIR / "secret_key"
        if not key_file.exists():
            DATA_DIR.mkdir(parents=True, exist_ok=True)
            key_file.write_text(secrets.token_urlsafe(50))
            key_file.chmod(0o600)
        return key_file.read_text().strip()
    raise ConfigError("SECRET_KEY must be set when DEBUG is off and DATABASE_URL is set")


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "csp",
    "axes",  # before "audit": its sign-in failure receiver flags a lockout before ours records it
    "accounts",
    "runs",
    "ops",
    "audit",
    "vault",
    "fleet",
    "workers",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # First: all below see the client address CONTROLPLANE_TRUSTED_PROXIES allows (ops.forwarded).
    "ops.forwarded.TrustedProxyMiddleware",
    "ops.middleware.RequestIdMiddleware",
    "ops.middleware.MetricsAccessMiddleware",
    "audit.context.AuditContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Before CommonMiddleware, whose Host check can fail a request: the 400 page gets these too.
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # NUL/unpaired surrogates in path, query and forms: a 400 naming the field (ops.inputs).
    "ops.middleware.InputGuardMiddleware",
    "ops.middleware.DatabaseUnavailableMiddleware",
    "axes.middleware.AxesMiddleware",  # inside CSP & co., so its lockout page gets their headers
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
ASGI_APPLICATION = "controlplane.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [TEMPLATES_DIR],  # templates/ in a checkout, package data in a wheel (controlplane_web)
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.pages.permissions",
            ],
        },
    },
]


def _databases() -> dict[str, Any]:
    config = parse_database_url(_database_url or f"sqlite:///{DATA_DIR / 'controlplane.sqlite3'}")
    if config.is_sqlite:
        Path(config.name).parent.mkdir(parents=True, exist_ok=True)
        return {
            "default": {
                "ENGINE": "django_prometheus.db.backends.sqlite3",
                "NAME": config.name,
                # WAL + a busy timeout + IMMEDIATE transactions: the embedded worker and the web
                # server write concurrently, which otherwise fails with "database is locked".
                "OPTIONS": {
                    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                    "transaction_mode": "IMMEDIATE",
                    "timeout": 30,
                },
                "TEST": {"NAME": str(Path(config.name).with_suffix(".test.sqlite3"))},
            }
        }
    options: dict[str, Any] = dict(config.options or {})
    # CONN_MAX_AGE > 0 under ASGI leaks one connection per thread; a pool bounds them instead.
    options["pool"] = {
        "min_size": 0,
        "max_size": env_int("DATABASE_POOL_MAX_SIZE", 10, minimum=1),
        "timeout": env_float("DATABASE_POOL_TIMEOUT", 10.0, minimum=0.1),
    }
    options.setdefault("connect_timeout", "5")
    return {
        "default": {
            "ENGINE": "django_prometheus.db.backends.postgresql",
            "NAME": config.name,
            "USER": config.user,
            "PASSWORD": config.password,
            "HOST": config.host,
            "PORT": config.port,
            "CONN_MAX_AGE": 0,
            # No check on checkout: it backs off 1, 2, 4 s between connections that died together,
            # into 503s (bench/db_kill_loop.py); ops.middleware repeats such a request instead.
            "CONN_HEALTH_CHECKS": False,
            "OPTIONS": options,
        }
    }


DATABASES = _databases()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "")
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "memory://localhost//")

if REDIS_URL:
    CHANNEL_LAYERS = {
        # Measured: the pub/sub layer holds ~1,950 deliveries/s against ~1,500 for the core layer,
        # and it has no per-channel capacity that silently drops bursts.
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": channel_prefix(REDIS_URL)},
        }
    }
    CACHES = {"default": {"BACKEND": "ops.cache.CountedRedisCache", "LOCATION": REDIS_URL}}
else:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 10_000}}
    }
    CACHES = {"default": {"BACKEND": "ops.cache.CountedLocMemCache"}}

_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 6 * 3600, minimum=1)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": _VISIBILITY_TIMEOUT,
    # Sweep for messages past their visibility timeout every few s (kombu's: ~100 s); one small query.
    "unacked_restore_interval": max(1, min(10, _VISIBILITY_TIMEOUT // 5)),
    "unacked_restore_throttle": 1,
    # Without a socket timeout a publish waits forever on a broker that vanished without closing
    # the connection (a failover, a NAT timeout).
    "socket_connect_timeout": 5,
    "socket_timeout": 30,
}
CELERY_TASK_DEFAULT_QUEUE = env_str("CONTROLPLANE_DEFAULT_QUEUE", "training")
CELERY_TASK_ROUTES = {"workers.tasks.housekeeping_*": {"queue": "housekeeping"}}

CONTROLPLANE: dict[str, float | int] = {
    "HEARTBEAT_SECONDS": env_float("CONTROLPLANE_HEARTBEAT_SECONDS", 10.0, minimum=0.1),
    "LEASE_SECONDS": env_float("CONTROLPLANE_LEASE_SECONDS", 60.0, minimum=1.0),
    "FLUSH_INTERVAL_SECONDS": env_float("CONTROLPLANE_FLUSH_INTERVAL_SECONDS", 0.25, minimum=0.01),
    "CANCEL_GRACE_SECONDS": env_float("CONTROLPLANE_CANCEL_GRACE_SECONDS", 5.0, minimum=0.0),
    "MAX_LOG_LINE_BYTES": env_int("CONTROLPLANE_MAX_LOG_LINE_BYTES", 16_384, minimum=256),
    "TOKEN_TTL_DAYS": env_int("CONTROLPLANE_TOKEN_TTL_DAYS", 30, minimum=1),
    "TOKEN_MAX_TTL_DAYS": env_int("CONTROLPLANE_TOKEN_MAX_TTL_DAYS", 365, minimum=1),
    "RETRY_BASE_SECONDS": env_float("CONTROLPLANE_RETRY_BASE_SECONDS", 5.0, minimum=0.0),
    "RETRY_MAX_SECONDS": env_float("CONTROLPLANE_RETRY_MAX_SECONDS", 300.0, minimum=0.0),
    "RECONCILE_SECONDS": env_float("CONTROLPLANE_RECONCILE_SECONDS", 10.0, minimum=0.5),
    "REDISPATCH_AFTER_SECONDS": env_float("CONTROLPLANE_REDISPATCH_AFTER_SECONDS", 20.0, minimum=1.0),
    "MAX_BUFFERED_LINES": env_int("CONTROLPLANE_MAX_BUFFERED_LINES", 200_000, minimum=1_000),
    "BREAKER_THRESHOLD": env_int("CONTROLPLANE_BREAKER_THRESHOLD", 5, minimum=1),
    "BREAKER_COOLDOWN_SECONDS": env_float("CONTROLPLANE_BREAKER_COOLDOWN_SECONDS", 60.0, minimum=0.0),
    "DATASET_MAX_BYTES": env_int("CONTROLPLANE_DATASET_MAX_BYTES", 1024**3, minimum=1),
    "DATASET_TIMEOUT_SECONDS": env_float("CONTROLPLANE_DATASET_TIMEOUT_SECONDS", 30.0, minimum=0.1),
    "DATASET_RETRIES": env_int("CONTROLPLANE_DATASET_RETRIES", 3, minimum=1),
    # How often a supervisor samples its program's CPU, memory and GPUs (workers/sampling.py); 0: never.
    "SYSTEM_METRICS_SECONDS": env_int("CONTROLPLANE_SYSTEM_METRICS_SECONDS", 5, minimum=0),
    **TRACKING,  # noqa: F405 - tracking mode's bounds, from controlplane/code_settings.py
}

# The fleet (fleet/, docs/architecture.md "Fleet"). WORKER_GPUS "auto": through NVML; "": none.
FLEET: dict[str, str | int | float] = {
    "WORKER_POOL": env_str("CONTROLPLANE_WORKER_POOL", "default"),
    "WORKER_GPUS": env_str("CONTROLPLANE_WORKER_GPUS", "auto"),
    "WORKER_SLOTS": env_int("CONTROLPLANE_WORKER_SLOTS", 1, minimum=1),
    "MAX_PREEMPTIONS": env_int("CONTROLPLANE_MAX_PREEMPTIONS", 3, minimum=0),
    "MAX_PRIORITY_OPERATOR": env_int("CONTROLPLANE_MAX_PRIORITY_OPERATOR", 70, minimum=0),
    "GPU_QUOTA_OPERATOR": env_int("CONTROLPLANE_GPU_QUOTA_OPERATOR", 8, minimum=0),
    "GPU_QUOTA_ADMIN": env_int("CONTROLPLANE_GPU_QUOTA_ADMIN", 1000, minimum=0),
    "AGING_MINUTES": env_float("CONTROLPLANE_AGING_MINUTES", 10.0, minimum=0.1),
}
CELERY_TASK_ROUTES["fleet.tasks.housekeeping_*"] = {"queue": "housekeeping"}

CELERY_BEAT_SCHEDULE = {
    "reconcile": {
        "task": "workers.tasks.housekeeping_reconcile",
        "schedule": CONTROLPLANE["RECONCILE_SECONDS"],
        # A reconcile that waited longer than one period is superseded by the next one.
        "options": {"queue": "housekeeping", "expires": CONTROLPLANE["RECONCILE_SECONDS"]},
    },
    # The scheduler's safety net: passes also run on launch, run end and worker changes.
    "schedule": {
        "task": "fleet.tasks.housekeeping_schedule",
        "schedule": CONTROLPLANE["RECONCILE_SECONDS"],
        "options": {"queue": "housekeeping", "expires": CONTROLPLANE["RECONCILE_SECONDS"]},
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.drf.PolicyPermission"],
    # DRF's JSON parser plus a depth limit and NUL/surrogate refusal, each a 400 naming the field.
    "DEFAULT_PARSER_CLASSES": ["ops.parsers.SafeJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "runs.api.pagination.RunCursorPagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "ops.api_errors.exception_handler",
    "PAGE_SIZE": 50,
}

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

STATIC_URL = "static/"
STATIC_ROOT = env_path("STATIC_ROOT", _HOME / "staticfiles")
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns on every start without it
STATICFILES_DIRS = [STATIC_DIR]  # as TEMPLATES_DIR
WHITENOISE_USE_FINDERS = True

DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# Production is served over TLS (usually behind a proxy); standalone is plain http on localhost.
_SECURE_DEFAULT = not (DEBUG or STANDALONE_DEFAULTS)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", _SECURE_DEFAULT)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if _SECURE_DEFAULT else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Preloading is a one-way commitment for the whole domain, so it is opt-in (SECURE_HSTS_PRELOAD).
SILENCED_SYSTEM_CHECKS = ["security.W021"]
if env_bool("USE_X_FORWARDED_PROTO", False):
    # Only behind a proxy that sets this header itself; otherwise clients could forge it.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 12 * 3600, minimum=300)

# Sign-in lockout (django-axes, database handler): after N failures for one username from one
# address, every attempt for it from there gets 429 (accounts.lockout) until the lockout ends.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_FAILURE_LIMIT = env_int("CONTROLPLANE_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = env_int("CONTROLPLANE_LOGIN_LOCKOUT_MINUTES", 15, minimum=1) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_DISABLE_ACCESS_LOG = True  # the audit log records sign-ins
AXES_LOCKOUT_CALLABLE = "accounts.lockout.lockout_response"
AXES_VERBOSE = False
# The lockout's address by ops.forwarded's rule, not django-ipware's (it believes anyone's XFF);
# forwarded headers count only from these proxies (empty: none; uvicorn runs --no-proxy-headers).
AXES_CLIENT_IP_CALLABLE = "ops.forwarded.request_client_ip"
TRUSTED_PROXIES = parse_networks("CONTROLPLANE_TRUSTED_PROXIES", env_list("CONTROLPLANE_TRUSTED_PROXIES", []))

# API rate limits (accounts.throttles): 429 with Retry-After, counted in the cache (Redis).
REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = [
    "accounts.throttles.AnonymousThrottle",
    "accounts.throttles.SignedInThrottle",
]
_THROTTLE_RATES = {
    "anon": env_str("CONTROLPLANE_THROTTLE_ANON", "60/min"),
    "user": env_str("CONTROLPLANE_THROTTLE_USER", "1200/min"),
    "auth": env_str("CONTROLPLANE_THROTTLE_AUTH", "10/min"),
}
for _scope, _rate in _THROTTLE_RATES.items():
    if not re.fullmatch(r"[1-9]\d*/(s|sec|m|min|h|hour|d|day)", _rate):
        raise ConfigError(f"CONTROLPLANE_THROTTLE_{_scope.upper()} must look like 60/min, got {_rate!r}")
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = _THROTTLE_RATES
# Throttles key on REMOTE_ADDR, never on a client-sent X-Forwarded-For (anyone could rotate it);
# behind a trusted proxy (CONTROLPLANE_TRUSTED_PROXIES) ops.forwarded puts the client there.
REST_FRAMEWORK["NUM_PROXIES"] = 0

# Audit checkpoints are signed with keys kept outside the database (audit.keys): the first key
# signs, all verify. Unset, a key is generated once into <data dir>/audit_key.
AUDIT_KEYS = env_list("CONTROLPLANE_AUDIT_KEY", [])
if any(len(key) < 32 for key in AUDIT_KEYS):
    raise ConfigError("CONTROLPLANE_AUDIT_KEY: each key needs at least 32 characters")
# Seconds down to 1: the window in which records not yet checkpointed and anchored could be
# deleted unnoticed (each pass walks the whole chain, so small values cost database reads).
AUDIT_CHECKPOINT_SECONDS = env_float("CONTROLPLANE_AUDIT_CHECKPOINT_SECONDS", 3600.0, minimum=1.0)
CELERY_BEAT_SCHEDULE["audit-checkpoint"] = {
    "task": "audit.tasks.housekeeping_audit_checkpoint",
    "schedule": AUDIT_CHECKPOINT_SECONDS,
    # A pass that waited longer than one period is superseded by the next: no backlog of walks.
    "options": {"queue": "housekeeping", "expires": AUDIT_CHECKPOINT_SECONDS},
}
# Where each signed checkpoint is also kept, outside the database (audit.anchors): comma-separated
# file:///absolute/path sinks (JSON lines, append-only, 0600); verification checks the newest.
AUDIT_ANCHORS = env_list("CONTROLPLANE_AUDIT_ANCHORS", [f"file://{DATA_DIR / 'audit-anchors.jsonl'}"])
if not AUDIT_ANCHORS or not all(re.fullmatch(r"file:///\S+", sink) for sink in AUDIT_ANCHORS):
    raise ConfigError(
        f"CONTROLPLANE_AUDIT_ANCHORS must list file:///absolute/path sinks, got {AUDIT_ANCHORS!r}"
    )

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOG_FORMAT = env_str("LOG_FORMAT", "json" if not sys.stderr.isatty() else "console")
_log_file = env_str("CONTROLPLANE_LOG_FILE", "")
LOGGING_CONFIG = None
configure_logging(
    config=LogConfig(
        level=LOG_LEVEL,
        fmt=LOG_FORMAT,
        file=Path(_log_file).expanduser().resolve() if _log_file else None,
        max_bytes=env_int("CONTROLPLANE_LOG_MAX_BYTES", 100 * 1024 * 1024, minimum=0),
        backups=env_int("CONTROLPLANE_LOG_BACKUPS", 5, minimum=0),
        debug_sample_rate=env_float("CONTROLPLANE_LOG_DEBUG_SAMPLE_RATE", 1.0, minimum=0.0, maximum=1.0),
        flood_limit=env_int("CONTROLPLANE_LOG_FLOOD_LIMIT", 500, minimum=0),
    )
)
# Observability: who may scrape /metrics, the worker's metrics port, what /readyz requires.
METRICS_TOKEN = env_str("CONTROLPLANE_METRICS_TOKEN", "")
METRICS_ALLOWED_NETWORKS = parse_networks(
    "CONTROLPLANE_METRICS_ALLOWED_NETWORKS", env_list("CONTROLPLANE_METRICS_ALLOWED_NETWORKS", [])
)
WORKER_METRICS_PORT = env_int("CONTROLPLANE_WORKER_METRICS_PORT", 9808, minimum=0, maximum=65535)
WORKER_HEARTBEAT_FILE = env_str("CONTROLPLANE_WORKER_HEARTBEAT_FILE", "")
# Dataset fetches reach only public unicast addresses, plus these networks (ops.netguard): an
# internal mirror or object store must be listed, never reachable by default.
DATASET_ALLOWED_NETWORKS = parse_networks(
    "CONTROLPLANE_DATASET_ALLOWED_NETWORKS", env_list("CONTROLPLANE_DATASET_ALLOWED_NETWORKS", [])
)
READY_QUEUES = env_list("CONTROLPLANE_READY_QUEUES", [CELERY_TASK_DEFAULT_QUEUE])
READY_MIN_FREE_BYTES = env_int("CONTROLPLANE_READY_MIN_FREE_BYTES", 1024**3, minimum=0)
