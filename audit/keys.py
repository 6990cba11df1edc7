"""The keys that sign audit checkpoints, kept outside the database.

`CONTROLPLANE_AUDIT_KEY` holds a comma-separated list: the first key signs new checkpoints, every
key verifies, so a key rotates by putting the new one first and dropping the old one once no
checkpoint it signed matters any more. Unset (standalone), a random key is generated once into
`<data dir>/audit_key` (mode 0600). A checkpoint names its key by `key_id`, a digest that reveals
nothing usable about the key.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

KEY_FILE_NAME = "audit_key"


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    secret: bytes


def key_id_of(secret: bytes) -> str:
    return hashlib.sha256(b"controlplane-audit-key-id:" + secret).hexdigest()[:16]


def _key(text: str) -> SigningKey:
    secret = text.encode()
    return SigningKey(key_id=key_id_of(secret), secret=secret)


def _file_key(path: Path) -> str:
    """The key in `path`, created once; O_EXCL so two processes starting together agree on one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def signing_keys() -> list[SigningKey]:
    """Every known key, the signing one first."""
    configured: list[str] = list(settings.AUDIT_KEYS)
    if not configured:
        configured = [_file_key(Path(settings.DATA_DIR) / KEY_FILE_NAME)]
    return [_key(text) for text in configured]


def current_key() -> SigningKey:
    return signing_keys()[0]


def key_by_id(key_id: str) -> SigningKey | None:
    return next((key for key in signing_keys() if key.key_id == key_id), None)
