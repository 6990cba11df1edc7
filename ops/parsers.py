"""The API's one JSON parser: DRF's, plus the input rules of ops.inputs (nesting depth, NUL,
unpaired surrogates), so no view sees a body the database or the runtime cannot take."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.parsers import JSONParser

from ops.inputs import DEPTH_MESSAGE, InvalidInput, check_json


class SafeJSONParser(JSONParser):
    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            # json's C scanner gives up past the interpreter's recursion limit (about 1,000 levels
            # here), far beyond MAX_JSON_DEPTH: refused the same way, without a trace.
            raise ParseError(f"JSON parse error - the body {DEPTH_MESSAGE}") from None
        try:
            check_json(data)
        except InvalidInput as error:
            raise ValidationError({error.field: [error.message]}) from None
        return data
