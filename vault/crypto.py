"""Secret values at rest: `MultiFernet` over the keys in `CONTROLPLANE_SECRETS_KEY`.

The setting is a comma-separated list of Fernet keys, newest first: the newest encrypts, every
key decrypts, so a key is rotated by putting a new one in front, running `rotate_secrets`, and
then dropping the old one. Standalone without a key generates one once into
`<data dir>/secrets.key` (0600). Production (DEBUG off and DATABASE_URL set) without a key has no
secrets at all: `NotConfigured`, which the API answers with a 503 instead of guessing a key that
the next replica would not share.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

log = structlog.get_logger(__name__)

KEY_FILE_NAME = "secrets.key"
NOT_CONFIGURED = (
    "secrets are not configured: set CONTROLPLANE_SECRETS_KEY (comma-separated Fernet keys, "
    "newest first) on the web and worker processes"
)


class NotConfigured(Exception):
    def __init__(self, message: str = NOT_CONFIGURED) -> None:
        super().__init__(message)


class Undecryptable(Exception):
    """No configured key opens this ciphertext (the key that wrote it was dropped too early)."""


def parse_keys(raw: str) -> list[bytes]:
    """The keys of a `CONTROLPLANE_SECRETS_KEY` value, newest first; ValueError names a bad one."""
    keys: list[bytes] = []
    for position, part in enumerate(raw.split(","), start=1):
        key = part.strip()
        if not key:
            continue
        try:
            Fernet(key.encode())
        except ValueError:
            raise ValueError(
                f"CONTROLPLANE_SECRETS_KEY: key {position} is not a Fernet key "
                "(32 url-safe base64-encoded bytes, as Fernet.generate_key() makes)"
            ) from None
        keys.append(key.encode())
    return keys


def key_id(key: bytes) -> str:
    """A short fingerprint that tells keys apart without revealing them."""
    return hashlib.sha256(key).hexdigest()[:12]


@dataclass(frozen=True)
class Keyring:
    keys: tuple[bytes, ...]

    @property
    def newest_id(self) -> str:
        return key_id(self.keys[0])

    def _multi(self) -> MultiFernet:
        return MultiFernet([Fernet(key) for key in self.keys])

    def encrypt(self, value: str) -> str:
        return self._multi().encrypt(value.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._multi().decrypt(token.encode()).decode()
        except InvalidToken:
            raise Undecryptable("no configured key decrypts this secret") from None

    def is_current(self, token: str) -> bool:
        """True when the newest key alone decrypts `token` (rotation has nothing to do)."""
        try:
            Fernet(self.keys[0]).decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    def rotate(self, token: str) -> str:
        try:
            return self._multi().rotate(token.encode()).decode()
        except InvalidToken:
            raise Undecryptable("no configured key decrypts this secret") from None


_lock = threading.Lock()
_cache: dict[str, Keyring] = {}


def is_production() -> bool:
    return not settings.DEBUG and not settings.STANDALONE_DEFAULTS


def keyring() -> Keyring:
    """The configured keys; NotConfigured in production without any."""
    raw = str(getattr(settings, "CONTROLPLANE_SECRETS_KEY", "") or "")
    if not raw.strip():
        if is_production():
            raise NotConfigured()
        raw = _standalone_key(Path(settings.DATA_DIR) / KEY_FILE_NAME)
    with _lock:
        ring = _cache.get(raw)
        if ring is None:
            keys = parse_keys(raw)
            if not keys:
                raise NotConfigured()
            ring = _cache[raw] = Keyring(tuple(keys))
        return ring


def configured() -> bool:
    try:
        keyring()
    except NotConfigured:
        return False
    return True


def _standalone_key(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(Fernet.generate_key().decode() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                # link() fails if another process created the key first: both then use that one.
                os.link(temporary, path)
            except FileExistsError:
                pass
            else:
                log.warning(
                    "secrets_key_generated",
                    path=str(path),
                    hint="back this file up with the database; set CONTROLPLANE_SECRETS_KEY in production",
                )
        finally:
            temporary.unlink(missing_ok=True)
    return path.read_text().strip()
