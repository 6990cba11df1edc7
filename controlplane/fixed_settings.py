"""Settings no environment variable changes, kept apart so controlplane/settings.py stays readable.

controlplane/settings.py imports each name (Django reads settings from that module only).
"""

from __future__ import annotations

__all__ = [
    "AUTH_PASSWORD_VALIDATORS",
    "CELERY_ACCEPT_CONTENT",
    "CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP",
    "CELERY_RESULT_BACKEND",
    "CELERY_TASK_ACKS_LATE",
    "CELERY_TASK_IGNORE_RESULT",
    "CELERY_TASK_REJECT_ON_WORKER_LOST",
    "CELERY_TASK_SERIALIZER",
    "CELERY_WORKER_HIJACK_ROOT_LOGGER",
    "CELERY_WORKER_PREFETCH_MULTIPLIER",
    "CONTENT_SECURITY_POLICY",
    "LANGUAGE_CODE",
    "SPECTACULAR_SETTINGS",
    "TIME_ZONE",
    "USE_I18N",
    "USE_TZ",
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# Celery: the run row in the database is the truth; the broker only carries "look at run N".
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

SPECTACULAR_SETTINGS = {
    "TITLE": "Training control plane API",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # runs.api.schema adds the plain Django views (downloads, logs.txt) and every operation's
    # error answers (400/401/403/404/409/429/503), so a generated client has a type for each.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "runs.api.schema.complete_schema",
    ],
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Content Security Policy (django-csp) on every response. The dashboard ships no inline scripts,
# event handlers or style attributes, so nothing needs 'unsafe-inline' or nonces. 'self' in
# connect-src also covers the same-origin ws:/wss: websocket (CSP Level 3).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
