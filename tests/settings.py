"""Test settings: the real settings module, pointed at the local Postgres and Redis.

Values are only defaults: CI or a developer may point the suite at other servers through the
same environment variables the product reads.
"""

import base64
import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/controlplane")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("SECRET_KEY", "test-secret-key-that-is-long-enough-for-checks-0123456789")
# A fresh Fernet key per test session; the stack's web and worker inherit it from this process.
os.environ.setdefault("CONTROLPLANE_SECRETS_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
# One audit checkpoint key for the test process and the stacks it starts (they verify its checkpoints).
os.environ.setdefault("CONTROLPLANE_AUDIT_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
# Tests make many requests from 127.0.0.1 in a minute; the rate-limit tests set small rates themselves.
os.environ.setdefault("CONTROLPLANE_THROTTLE_ANON", "100000/min")
os.environ.setdefault("CONTROLPLANE_THROTTLE_USER", "100000/min")
os.environ.setdefault("CONTROLPLANE_THROTTLE_AUTH", "100000/min")
# The suite's dataset sources listen on loopback only; the refusal tests override this.
os.environ.setdefault("CONTROLPLANE_DATASET_ALLOWED_NETWORKS", "127.0.0.1/32")
os.environ.setdefault(
    "CONTROLPLANE_PROGRAMS_FILE", os.path.join(os.path.dirname(__file__), "fixtures", "programs.toml")
)

# The suite's database is created by `migrate`: its programs come from the file (not seeded), and
# the seed's tests run it themselves (tests/api/test_program_catalog.py).
os.environ.setdefault("CONTROLPLANE_PROGRAMS_SEED_ON_MIGRATE", "false")

from controlplane.settings import *  # noqa: F403
