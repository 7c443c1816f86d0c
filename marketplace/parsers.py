import io

from django.conf import settings
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser


class PayloadTooLarge(APIException):
    """413. Defined here, not in marketplace.problems: that module imports rest_framework.views, whose
    APIView imports this module (DEFAULT_PARSER_CLASSES), so importing it first was a circular import."""

    status_code = 413
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


class BoundedJSONParser(JSONParser):
    """JSON parser that refuses bodies over API_MAX_BODY_BYTES with 413, chunked or not."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.API_MAX_BODY_BYTES
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"The request body is over {limit} bytes.")
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is over {limit} bytes.")
        try:
            return super().parse(io.BytesIO(body), media_type, parser_context)
        except RecursionError as exc:  # e.g. "[[[[..." : json raises this, not a ValueError
            raise ParseError("JSON parse error - the document is nested too deeply.") from exc
