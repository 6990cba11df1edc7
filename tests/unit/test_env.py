"""Settings parsers: bad values stop the process with the variable's name, never a guess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.env import (
    ConfigError,
    channel_prefix,
    env_bool,
    env_int,
    env_list,
    parse_database_url,
    storage_config,
)
from ops.request_id import clean_request_id

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("url", "engine", "name", "host", "port", "user"),
    [
        (
            "postgres://u:p%40ss@db.internal:5433/cp",
            "django.db.backends.postgresql",
            "cp",
            "db.internal",
            "5433",
            "u",
        ),
        (
            "postgresql://postgres@127.0.0.1/controlplane",
            "django.db.backends.postgresql",
            "controlplane",
            "127.0.0.1",
            "",
            "postgres",
        ),
        ("sqlite:////srv/cp/db.sqlite3", "django.db.backends.sqlite3", "/srv/cp/db.sqlite3", "", "", ""),
        ("sqlite:///var/db.sqlite3", "django.db.backends.sqlite3", "var/db.sqlite3", "", "", ""),
    ],
)
def test_database_urls_parse(url: str, engine: str, name: str, host: str, port: str, user: str) -> None:
    config = parse_database_url(url)
    assert (config.engine, config.name, config.host, config.port, config.user) == (
        engine,
        name,
        host,
        port,
        user,
    )


def test_database_url_password_is_unquoted_and_options_kept() -> None:
    config = parse_database_url("postgres://u:p%40ss@h/db?sslmode=require")
    assert config.password == "p@ss"
    assert config.options == {"sslmode": "require"}


@pytest.mark.parametrize(
    "url", ["mysql://x/y", "postgres://h:notaport/db", "postgres://h/", "sqlite://", "nonsense"]
)
def test_bad_database_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        parse_database_url(url)


def test_typed_helpers_reject_bad_values_with_the_variable_name() -> None:
    with pytest.raises(ConfigError, match="DEBUG"):
        env_bool("DEBUG", False, {"DEBUG": "maybe"})
    with pytest.raises(ConfigError, match="PORT"):
        env_int("PORT", 1, {"PORT": "eighty"})
    with pytest.raises(ConfigError, match="PORT must be >= 1"):
        env_int("PORT", 1, {"PORT": "0"}, minimum=1)
    assert env_bool("DEBUG", False, {"DEBUG": "Yes"}) is True
    assert env_int("N", 7, {}) == 7
    assert env_list("HOSTS", ["a"], {"HOSTS": "x.example, y.example,,"}) == ["x.example", "y.example"]


def _import_settings(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "SECRET_KEY", "DEBUG", "DJANGO"))
    }
    return subprocess.run(
        [sys.executable, "-c", "import controlplane.settings"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_production_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    result = _import_settings(DATABASE_URL="postgres://u@h/db", CONTROLPLANE_DATA_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_production_refuses_a_weak_secret_key(tmp_path: Path) -> None:
    result = _import_settings(
        DATABASE_URL="postgres://u@h/db",
        SECRET_KEY="django-insecure-abc",
        CONTROLPLANE_DATA_DIR=str(tmp_path),
    )
    assert result.returncode != 0
    assert "SECRET_KEY is too weak" in result.stderr


def test_standalone_defaults_make_and_keep_a_random_secret_key(tmp_path: Path) -> None:
    assert _import_settings(CONTROLPLANE_DATA_DIR=str(tmp_path)).returncode == 0
    key = (tmp_path / "secret_key").read_text()
    assert len(key) >= 50
    assert oct((tmp_path / "secret_key").stat().st_mode & 0o777) == "0o600"
    assert _import_settings(CONTROLPLANE_DATA_DIR=str(tmp_path)).returncode == 0
    assert (tmp_path / "secret_key").read_text() == key


def test_a_bad_boolean_stops_the_process_naming_it(tmp_path: Path) -> None:
    result = _import_settings(DEBUG="perhaps", CONTROLPLANE_DATA_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "DEBUG must be a boolean" in result.stderr


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("bad\nid", False),
        ("", False),
        (None, False),
        ("a b", False),
    ],
)
def test_request_ids_are_kept_only_when_safe(given: str | None, kept: bool) -> None:
    result = clean_request_id(given)
    assert (result == given) is kept
    assert len(result) <= 64


@pytest.mark.parametrize(
    ("url", "environ", "prefix"),
    [
        ("redis://127.0.0.1:6379", {}, "asgi"),
        ("redis://127.0.0.1:6379/0", {}, "asgi"),
        ("redis://127.0.0.1:6379/14", {}, "asgi-db14"),
        ("redis://127.0.0.1:6379/15", {"CONTROLPLANE_CHANNEL_PREFIX": "blue"}, "blue"),
    ],
)
def test_the_channel_prefix_keeps_redis_databases_apart(
    url: str, environ: dict[str, str], prefix: str
) -> None:
    # Redis pub/sub ignores the database number: the prefix is what keeps two deployments apart.
    assert channel_prefix(url, environ) == prefix


def test_env_choice_takes_one_of_its_choices_and_refuses_anything_else() -> None:
    from controlplane.env import env_choice

    assert env_choice("ROLE", "operator", ("operator", "admin"), {}) == "operator"
    assert env_choice("ROLE", "operator", ("operator", "admin"), {"ROLE": " Admin "}) == "admin"
    with pytest.raises(ConfigError, match="ROLE must be one of operator, admin, got 'viewer'"):
        env_choice("ROLE", "operator", ("operator", "admin"), {"ROLE": "viewer"})


def test_storage_is_a_local_directory_unless_a_bucket_is_named(tmp_path: Path) -> None:
    local = storage_config(tmp_path / "artifacts", {})
    assert (local.kind, local.root, local.checkpoints_keep) == ("local", tmp_path / "artifacts", 0)
    assert storage_config(tmp_path, {"CONTROLPLANE_STORAGE_URL": "file:///srv/art"}).root == Path("/srv/art")
    bucket = storage_config(tmp_path, {"CONTROLPLANE_STORAGE_URL": "s3://models/prod/cp/"})
    assert (bucket.kind, bucket.bucket, bucket.prefix, bucket.checkpoints_keep) == (
        "s3",
        "models",
        "prod/cp/",
        5,
    )
    assert storage_config(tmp_path, {"CONTROLPLANE_STORAGE_URL": "s3://models"}).prefix == ""


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"CONTROLPLANE_STORAGE_URL": "gs://models"}, "CONTROLPLANE_STORAGE_URL"),
        ({"CONTROLPLANE_STORAGE_URL": "s3:///no-bucket"}, "CONTROLPLANE_STORAGE_URL"),
        ({"CONTROLPLANE_STORAGE_URL": "file://relative/dir"}, "CONTROLPLANE_STORAGE_URL"),
        ({"CONTROLPLANE_STORAGE_PRESIGNED_DOWNLOADS": "true"}, "CONTROLPLANE_STORAGE_PRESIGNED_DOWNLOADS"),
        (
            {"CONTROLPLANE_STORAGE_URL": "s3://b", "CONTROLPLANE_CHECKPOINTS_KEEP": "-1"},
            "CONTROLPLANE_CHECKPOINTS_KEEP",
        ),
        (
            {"CONTROLPLANE_STORAGE_URL": "s3://b", "CONTROLPLANE_STORAGE_PRESIGNED_SECONDS": "1"},
            "PRESIGNED_SECONDS",
        ),
    ],
)
def test_a_bad_storage_setting_stops_the_start_naming_the_variable(
    tmp_path: Path, environ: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        storage_config(tmp_path, environ)
