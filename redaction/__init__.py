"""Secret redaction: the one place that turns secret values into `***`.

A value is matched in the forms it commonly leaks in (redaction.forms says which): as is, base64
and hex (also inside a longer base64 string), and with any of its characters percent-encoded,
JSON-, Python- or HTML-escaped. Secrets shorter than
`MIN_SECRET_LENGTH` are refused when they are stored, so redaction never eats ordinary words.

The process-wide `registry` holds the values of the secrets in use in this process (a worker
registers a run's secrets for as long as it supervises the run), so every structlog line is
redacted too, whatever code path produced it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import quote

from redaction.forms import MIN_SECRET_LENGTH, leak_pattern, literal_forms

__all__ = [
    "MASK",
    "MIN_SECRET_LENGTH",
    "RedactionRegistry",
    "Redactor",
    "leak_forms",
    "redact",
    "redact_event",
    "redact_value",
    "registry",
]

MASK = "***"


def leak_forms(value: str) -> set[str]:
    """The plain strings a secret value may appear as (its escapes are matched by pattern)."""
    return literal_forms(value) | {quote(value, safe="")} if len(value) >= MIN_SECRET_LENGTH else set()


class Redactor:
    """Replaces every recognised leak form of a fixed set of values (redaction.forms)."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        kept = sorted({value for value in values if len(value) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        literals: set[str] = set()
        for value in kept:
            literals |= leak_forms(value)
        # For a line cut inside a value: its beginning in any plain form is masked too.
        self._forms = tuple(sorted(literals, key=len, reverse=True))
        # Longest value first, so a value that contains another is masked whole.
        patterns = [leak_pattern(value) for value in kept]
        self._pattern = re.compile("|".join(patterns)) if patterns else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str, *, cut: bool = False) -> str:
        """`text` with every leak form masked. `cut`: the text was truncated at its end, where a
        form may have been cut in two; a trailing beginning of one is masked too."""
        if self._pattern is None or not text:
            return text
        masked = self._pattern.sub(MASK, text)
        if cut:
            partial = max(
                (
                    k
                    for form in self._forms
                    for k in range(min(len(form) - 1, len(masked)), 0, -1)
                    if masked.endswith(form[:k])
                ),
                default=0,
            )
            if partial:
                masked = masked[:-partial] + MASK
        return masked

    def value(self, value: Any) -> Any:
        """`value` with every string inside it (dict keys and values, list items) redacted."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(key): self.value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(item) for item in value)
        return value


class RedactionRegistry:
    """The secret values in use in this process, each set registered under a handle."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sets: dict[int, tuple[str, ...]] = {}
        self._next = 0
        self._redactor = Redactor()

    def add(self, values: Iterable[str]) -> int:
        with self._lock:
            self._next += 1
            self._sets[self._next] = tuple(v for v in values if v)
            self._rebuild()
            return self._next

    def discard(self, handle: int) -> None:
        with self._lock:
            if self._sets.pop(handle, None) is not None:
                self._rebuild()

    def _rebuild(self) -> None:
        self._redactor = Redactor(value for values in self._sets.values() for value in values)

    @property
    def redactor(self) -> Redactor:
        return self._redactor


registry = RedactionRegistry()


def redact(text: str) -> str:
    """`text` with every secret in use in this process masked."""
    return registry.redactor.text(text)


def redact_value(value: Any) -> Any:
    return registry.redactor.value(value)


def redact_event(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: masks secrets in every field of a log line, tracebacks included."""
    redactor = registry.redactor
    if not redactor:
        return event_dict
    for key, item in list(event_dict.items()):
        if key == "exc_info" and item:
            continue  # rendered to text by format_exc_info; redacted once it is a string
        event_dict[key] = redactor.value(item) if isinstance(item, str | dict | list | tuple) else item
    return event_dict
