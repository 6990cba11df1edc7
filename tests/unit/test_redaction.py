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
