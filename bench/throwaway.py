"""A throwaway Postgres database for one benchmark run, and Django set up on it.

Each bench creates its own database (dropped at the end) so it never touches a developer's data
and two benches never share tables.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[1]
PG: dict[str, Any] = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def create_database(name: str) -> None:
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_django(db_name: str, data_dir: Path, redis: bool) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "DATABASE_URL": f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{db_name}",
            "SECRET_KEY": secrets.token_urlsafe(48),
            "CONTROLPLANE_DATA_DIR": str(data_dir),
            "CONTROLPLANE_ARTIFACTS_DIR": str(data_dir / "artifacts"),
            "STATIC_ROOT": str(data_dir / "static"),
            "LOG_LEVEL": "WARNING",
            "DEBUG": "false",
        }
    )
    if redis:
        os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    else:
        os.environ.pop("REDIS_URL", None)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
