"""Input every request may carry that the database or the runtime cannot take, refused as a 400
naming the field instead of failing as a 500 deep inside a view.

Postgres refuses NUL in text, UTF-8 cannot encode an unpaired surrogate (JSON's "\\ud800"
escape makes one), deeply nested JSON exhausts the parser's recursion, and ids beyond bigint
cannot be looked up. The JSON parser (ops.parsers), the input middleware (ops.middleware) and the
cursor pagination (ops.pagination) apply these rules once for every endpoint and page.
"""

from __future__ import annotations

import re
from typing import Any

MAX_JSON_DEPTH = 32
MAX_ID = 2**63 - 1  # Postgres bigint; every primary key fits in it
_BAD = re.compile("[\x00\ud800-\udfff]")
NUL_MESSAGE = "must not contain NUL characters"
SURROGATE_MESSAGE = "must not contain unpaired surrogate characters"
DEPTH_MESSAGE = f"must not be nested more than {MAX_JSON_DEPTH} levels deep"


class InvalidInput(Exception):
    """A field the request cannot carry; answered with a 400 that names it (ops.middleware)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field[:200]
        self.message = message


def text_problem(value: str) -> str | None:
    found = _BAD.search(value)
    if found is None:
        return None
    return NUL_MESSAGE if found.group() == "\x00" else SURROGATE_MESSAGE


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def check_json(data: Any) -> None:
    """Raise InvalidInput for the first bad string (key or value) or a too-deep nesting."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:  # iterative: a deep document must not exhaust the recursion here either
        value, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidInput(path or "non_field_errors", DEPTH_MESSAGE)
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                raise InvalidInput(path or "non_field_errors", problem)
        elif isinstance(value, dict):
            for key, item in value.items():
                problem = text_problem(str(key))
                if problem:
                    raise InvalidInput(_join(path, _printable(str(key))), problem)
                stack.append((item, _join(path, key), depth + 1))
        elif isinstance(value, list):
            stack.extend((item, _join(path, index), depth + 1) for index, item in enumerate(value))


def _printable(key: str) -> str:
    return _BAD.sub("?", key)


def check_pairs(pairs: list[tuple[str, list[str]]]) -> None:
    """Query-string or form fields: names and values must be clean text."""
    for key, values in pairs:
        problem = text_problem(key)
        if problem:
            raise InvalidInput(_printable(key), problem)
        for value in values:
            problem = text_problem(value)
            if problem:
                raise InvalidInput(key, problem)


def parse_id(field: str, text: str) -> int:
    """A positive database id, or InvalidInput naming `field` (also beyond the bigint range)."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not 0 < int(text) <= MAX_ID:
        raise InvalidInput(field, f"{text[:40]!r} is not a valid id (1 to {MAX_ID})")
    return int(text)
