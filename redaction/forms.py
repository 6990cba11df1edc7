"""The forms a secret value leaks in, as literal strings and as one regular expression.

Two kinds of encodings are recognised:

- **Whole-value encodings** whose output shares no character with the value's own spelling:
  base64 (standard and URL-safe, padded or not) and hex (any letter case). Because base64 works
  on 3-byte groups, a value inside a longer encoded string (a Basic-auth header, `user:value`)
  is spelled one of three ways depending on its offset; each offset's *core* (the characters that
  only the value's bytes decide) is matched as well.
- **Character-level escapes** that a program may apply to any character of the value, in any mix:
  percent-encoding (any safe set, any hex case, `+` for a space), JSON and JavaScript escapes
  (`\\uXXXX`, surrogate pairs, `\\"`, `\\/`), Python `repr`/`ascii` escapes (`\\xNN`, `\\uNNNN`,
  `\\UNNNNNNNN`, `\\n`, `\\'`, and the UTF-8 bytes of a `bytes` repr) and HTML character
  references (`&#NN;`, `&#xNN;`, `&amp;` and friends). The value's pattern is its characters in
  order, each matching itself or any of its escapes, so `s%33cr\\u0065t` is found as `s3cret`.

What is out of scope (documented in docs/security.md): encodings applied twice, compression,
encryption, base32/85, a value split across lines or fields, and a value transformed by the program
(reversed, sliced, hashed).
"""

from __future__ import annotations

import base64
import binascii
import html.entities
import re

MIN_SECRET_LENGTH = 8

_NAMED_ESCAPES = {"\n": "n", "\t": "t", "\r": "r", "\b": "b", "\f": "f", "\v": "v", "\a": "a", "\0": "0"}
_BACKSLASHED = set("\"'\\/")
_HTML_NAMES = {chr(code): name for name, code in html.entities.name2codepoint.items()}


def _hex(number: int, width: int) -> str:
    # Scoped case-insensitivity: an escape's hex digits may be written in either case.
    return f"(?i:{number:0{width}x})"


def _escapes(ch: str) -> set[str]:
    """Regular expressions for one character: itself and every escape of it recognised."""
    point = ord(ch)
    utf8 = ch.encode()
    found = {re.escape(ch), "".join(f"%{_hex(byte, 2)}" for byte in utf8)}
    if ch == " ":
        found.add(r"\+")
    if point < 0x10000:
        found.add(rf"\\u{_hex(point, 4)}")
    else:
        high, low = 0xD800 + ((point - 0x10000) >> 10), 0xDC00 + ((point - 0x10000) & 0x3FF)
        found.add(rf"\\u{_hex(high, 4)}\\u{_hex(low, 4)}")
    found.add(rf"\\U{_hex(point, 8)}")
    if point < 0x100:
        found.add(rf"\\x{_hex(point, 2)}")
    if point >= 0x80:
        found.add("".join(rf"\\x{_hex(byte, 2)}" for byte in utf8))  # repr of the UTF-8 bytes
    if ch in _BACKSLASHED:
        found.add(re.escape("\\" + ch))
    if ch in _NAMED_ESCAPES:
        found.add(re.escape("\\" + _NAMED_ESCAPES[ch]))
    found.add(f"&#0*{point};")
    found.add(f"&#[xX]0*{_hex(point, 1)};")
    if ch in _HTML_NAMES:
        found.add(f"&{_HTML_NAMES[ch]};")
    return found


def escaped_pattern(value: str) -> str:
    """The value, each character as itself or any of its escapes."""
    return "".join("(?:" + "|".join(sorted(_escapes(ch), key=len, reverse=True)) + ")" for ch in value)


def _base64_cores(raw: bytes) -> set[str]:
    """The base64 characters decided by `raw` alone, for each of its three offsets in a longer
    input: with `a` bytes before it, the first ceil(8a/6) characters and the last partial one
    also depend on the neighbours' bytes, so they are left out."""
    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw + b"\0\0")
        start = -(-offset * 8 // 6)
        end = (offset + len(raw)) * 8 // 6
        core = encoded[start:end].decode()
        cores |= {core, core.replace("+", "-").replace("/", "_")}
    return cores


def literal_forms(value: str) -> set[str]:
    """Whole-value encodings as plain strings (also used to mask the head of a cut line)."""
    raw = value.encode()
    forms = {
        value,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        binascii.hexlify(raw).decode(),
    }
    forms |= {form.rstrip("=") for form in forms}
    forms |= _base64_cores(raw)
    forms.add(binascii.hexlify(raw).decode().upper())
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


def leak_pattern(value: str) -> str:
    """One regular expression for every recognised leak form of `value`; empty when too short."""
    if len(value) < MIN_SECRET_LENGTH:
        return ""
    hex_form = binascii.hexlify(value.encode()).decode()
    literals = sorted(literal_forms(value) - {value, hex_form, hex_form.upper()}, key=len, reverse=True)
    # Longest first: a value's base64 is masked whole rather than around a shorter core.
    parts = [re.escape(form) for form in literals] + [f"(?i:{hex_form})", escaped_pattern(value)]
    return "|".join(parts)
