"""Redaction: every leak form of a secret becomes `***`, and nothing else is touched."""

from __future__ import annotations

import base64
import binascii
import json
from urllib.parse import quote, quote_plus

import pytest

from redaction import MASK, Redactor, leak_forms, redact, redact_event, redact_value, registry

VALUE = "s3cr3t/Value+with&odd=chars"


def encodings(value: str) -> list[str]:
    raw = value.encode()
    return [
        value,
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
        binascii.hexlify(raw).decode(),
        binascii.hexlify(raw).decode().upper(),
        quote(value, safe=""),
        quote_plus(value, safe=""),
    ]


@pytest.mark.parametrize("form", encodings(VALUE))
def test_every_leak_form_of_a_value_is_masked_inside_a_line(form: str) -> None:
    line = f"token={form}; done"
    assert Redactor([VALUE]).text(line) == f"token={MASK}; done"


def test_ordinary_text_without_the_value_is_left_alone() -> None:
    line = "step 10 loss 2.31 s3cr3t but not the value"
    assert Redactor([VALUE]).text(line) == line


def test_a_redactor_without_values_is_falsy_and_changes_nothing() -> None:
    redactor = Redactor([])
    assert not redactor
    assert redactor.text(VALUE) == VALUE
    assert redactor.value({"k": VALUE}) == {"k": VALUE}


def test_forms_shorter_than_the_minimum_are_not_matched() -> None:
    # A short value's forms would mask ordinary words; the store refuses such values anyway.
    assert leak_forms("abc") == set()
    assert Redactor(["abc"]).text("abc abcdef") == "abc abcdef"


def test_structures_are_redacted_in_keys_values_and_lists() -> None:
    event = {"type": "metric", "values": {f"leak/{VALUE}": 1.0}, "notes": [VALUE, 3, None], "n": 2}
    assert Redactor([VALUE]).value(event) == {
        "type": "metric",
        "values": {f"leak/{MASK}": 1.0},
        "notes": [MASK, 3, None],
        "n": 2,
    }


def test_a_line_cut_inside_a_value_masks_the_value_s_head() -> None:
    cut = "x" * 20 + VALUE[:10]
    redactor = Redactor([VALUE])
    assert redactor.text(cut) == cut  # uncut text: a prefix alone is not the secret
    assert redactor.text(cut, cut=True) == "x" * 20 + MASK
    hex_head = binascii.hexlify(VALUE.encode()).decode()[:9]
    assert redactor.text("y" * 5 + hex_head, cut=True) == "y" * 5 + MASK


def test_a_cut_line_keeps_its_text_when_it_ends_in_no_beginning_of_a_form() -> None:
    assert Redactor([VALUE]).text("plain text", cut=True) == "plain text"


def test_the_registry_redacts_while_a_set_is_registered_and_stops_after_discard() -> None:
    other = "another-secret-value-42"
    first = registry.add([VALUE])
    second = registry.add([other])
    try:
        assert redact(f"{VALUE} {other}") == f"{MASK} {MASK}"
        assert redact_value({"a": [VALUE]}) == {"a": [MASK]}
        registry.discard(first)
        assert redact(f"{VALUE} {other}") == f"{VALUE} {MASK}"
    finally:
        registry.discard(first)
        registry.discard(second)
    assert redact(other) == other


def test_the_structlog_processor_masks_every_string_field() -> None:
    handle = registry.add([VALUE])
    try:
        event = redact_event(
            None,
            "info",
            {"event": f"saw {VALUE}", "preview": quote(VALUE, safe=""), "count": 3, "extra": {"k": VALUE}},
        )
    finally:
        registry.discard(handle)
    assert VALUE not in json.dumps(event)
    assert event == {"event": f"saw {MASK}", "preview": MASK, "count": 3, "extra": {"k": MASK}}


# Issue 11: the value inside larger encodings and in the escapes programs commonly produce.
ODD = 'pässwörd"/\\:🔑 x&<y>'


def _escaped_forms(value: str) -> dict[str, str]:
    import html
    from urllib.parse import quote as q

    return {
        "json_ascii": json.dumps(value)[1:-1],
        "json_utf8": json.dumps(value, ensure_ascii=False)[1:-1],
        "json_slash": json.dumps(value)[1:-1].replace("/", "\\/"),
        "repr": repr(value)[1:-1],
        "ascii": ascii(value)[1:-1],
        "bytes_repr": repr(value.encode())[2:-1],
        "quote_default_safe": q(value),
        "quote_lower_hex": q(value, safe="").lower(),
        "quote_custom_safe": q(value, safe="&=:/"),
        "html": html.escape(value),
        "html_numeric": "".join(f"&#{ord(c)};" for c in value),
    }


@pytest.mark.parametrize("name", sorted(_escaped_forms(ODD)))
def test_escaped_forms_of_a_value_are_masked(name: str) -> None:
    form = _escaped_forms(ODD)[name]
    assert Redactor([ODD]).text(f"<<{form}>>") == f"<<{MASK}>>", form


@pytest.mark.parametrize("prefix", ["", "u", "us", "user:", "Authorization: Basic "])
def test_the_value_inside_a_longer_base64_string_is_masked(prefix: str) -> None:
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        encoded = encode(f"{prefix}{VALUE}@host/path".encode()).decode()
        masked = Redactor([VALUE]).text(f"Basic {encoded}")
        # All but the at most 3 characters shared with the neighbours' bytes are gone.
        assert MASK in masked
        assert len(masked) <= len(f"Basic {encoded}") - (len(VALUE) * 4 // 3 - 3) + len(MASK)


def test_a_value_spelled_with_mixed_escapes_is_masked() -> None:
    mixed = "s%33cr\\u0033t/V&#97;lue+with&odd=chars"
    assert Redactor([VALUE]).text(f"x {mixed} y") == f"x {MASK} y"


def test_text_that_only_resembles_the_value_is_left_alone() -> None:
    for near in ["s3cr3t/Value+with&odd=char", "S3CR3T/VALUE+WITH&ODD=CHARS", "s3cr3t%2FValue"]:
        assert Redactor([VALUE]).text(near) == near
