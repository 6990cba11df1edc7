"""Test settings: the real settings module, pointed at the local Postgres and Redis.

Values are only defaults: CI or a developer may point the suite at other servers through the
same environment variables the product reads.
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/controlplane")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("SECRET_KEY", "test-secret-key-that-is-long-enough-for-checks-0123456789")
os.environ.setdefault(
    "CONTROLPLANE_PROGRAMS_FILE", os.path.join(os.path.dirname(__file__), "fixtures", "programs.toml")
)

from controlplane.settings import *  # noqa: F403
