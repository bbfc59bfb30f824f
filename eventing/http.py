"""CloudEvents over HTTP (the protocol binding), on top of the cloudevents SDK 2.x core API.

Kept apart from the event model: handlers and functions call :func:`parse` on a request's headers
and body and get a ``CloudEvent`` or an :class:`InvalidEvent` that says what is wrong (→ 400);
senders call :func:`to_binary` / :func:`to_structured` for the headers and body to POST.

:func:`parse` is strict where the SDK is lenient, because its input comes from anyone who can
reach a service (codes of the :class:`InvalidEvent`):

- ``not_a_cloudevent``: neither ``ce-*`` headers nor a structured content type;
- ``missing_attribute``: ``id``, ``source``, ``type`` or ``specversion`` absent or empty;
- ``invalid_attribute``: ``specversion`` other than ``1.0``; a context attribute that is not a
  string (structured mode); an extension name outside ``[a-z0-9]{1,20}``; an extension value
  that is not a string, a 32-bit integer or a boolean (JSON ``null`` counts as absent); a value
  with control characters or longer than :data:`MAX_ATTRIBUTE_BYTES`; ``time`` not RFC 3339;
  ``datacontenttype`` (or binary mode's Content-Type) not a media type; more than
  :data:`MAX_ATTRIBUTES` attributes (``time`` included; a broker's ingress asks for fewer);
- ``malformed_event``: a structured body that is not acceptable JSON (not UTF-8, nested deeper
  than ``skylark.serving.limits.MAX_JSON_DEPTH``, ``NaN``/``Infinity``, not an object), both
  ``data`` and ``data_base64``, invalid base64;
- ``malformed_data``: binary-mode JSON data with the same defects.

The limits keep an accepted event forwardable: a broker sends every attribute on as an HTTP
header, percent-encoded (up to 3 bytes per byte), and a receiving gunicorn takes at most 100
header fields of at most 8190 bytes (``docs/conventions.md``, *Limits*). Integer and boolean
extensions of a structured event become their canonical strings (``7``, ``true``), as they
would arrive in binary mode, so filters and receivers see one form.
"""

from __future__ import annotations

import base64
import json
import binascii
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from dateutil.parser import isoparse

from skylark.serving import limits

_FORMAT = JSONFormat()
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"

# Largest event a broker takes (a 64 MiB bundle inline, plus its base64 and JSON around it); the
# dead-letter sink takes as much, since it receives whatever a broker could not deliver.
MAX_EVENT_BYTES = 80 * 1024 * 1024
# Per attribute value (UTF-8): percent-encoded as a header it stays under gunicorn's 8190-byte
# limit on one header field, so an accepted event can always be forwarded.
MAX_ATTRIBUTE_BYTES = 2048
# Attributes per event, context attributes included: forwarded as headers, they must leave room
# under gunicorn's 100 header fields for the transport's own (Host, Content-Type, traceparent...).
MAX_ATTRIBUTES = 64

SPECVERSION = "1.0"
REQUIRED = ("id", "source", "type", "specversion")
CONTEXT_ATTRIBUTES = (*REQUIRED, "datacontenttype", "dataschema", "subject", "time")
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
# C0 and C1 control characters and DEL: not allowed in a CloudEvents String, and the way a
# value would smuggle a line break into a header when a broker forwards it.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# RFC 3339 date-time, ASCII digits only (dateutil's isoparse alone takes more forms than that).
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,12})?"
                      r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})")
_INT32 = (-(2**31), 2**31 - 1)
# A media type (RFC 6838 names, printable-ASCII parameters): datacontenttype is the one attribute
# a broker forwards verbatim, as Content-Type, where a leading blank or a non-Latin-1 character
# would make the HTTP client refuse to send it.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}(?:[ \t]*;[\x20-\x7e]*)?")


class InvalidEvent(ValueError):
    """The request is not a valid CloudEvent; ``code`` is a short name for the JSON error body."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def new_event(type_: str, source: str, data: Any = None, *, id_: str | None = None,
              datacontenttype: str | None = "application/json", **extensions: Any) -> CloudEvent:
    """A v1.0 CloudEvent; ``None``-valued extensions are left out, others become strings."""
    attributes: dict[str, Any] = {"type": type_, "source": source}
    if id_ is not None:
        attributes["id"] = id_
    if datacontenttype is not None and data is not None:
        attributes["datacontenttype"] = datacontenttype
    for name, value in extensions.items():
        if value is not None:
            attributes[name] = str(value)
    return CloudEvent(attributes, data)


def parse(headers: Mapping[str, str], body: bytes, *, decode_data: bool = True,
          max_attributes: int = MAX_ATTRIBUTES) -> BaseCloudEvent:
    """Parse a binary- or structured-mode HTTP CloudEvent (v1.0).

    Raises :class:`InvalidEvent` for anything that is not one (see the module's docstring for
    the codes). With ``decode_data`` False a binary-mode body stays the bytes as sent, unread:
    for a broker, which routes on the attributes and forwards the data untouched (as Knative's
    does). ``max_attributes`` (``time`` included, which is set when absent): a broker takes
    fewer than its subscribers, since it adds its own on the way.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    binary = any(k.startswith("ce-") for k in lowered)
    content_type = lowered.get("content-type", "")
    if not binary and not content_type.startswith(STRUCTURED_CONTENT_TYPE):
        raise InvalidEvent(
            "not_a_cloudevent",
            "expected a CloudEvent: ce-* headers (binary mode) or a body of type "
            f"{STRUCTURED_CONTENT_TYPE} (structured mode)",
        )
    try:
        if binary:
            return _from_binary(lowered, body, decode_data, max_attributes)
        return _from_structured(body, max_attributes)
    except InvalidEvent:
        raise
    except (BaseCloudEventException, ValueError, TypeError, KeyError, OverflowError) as exc:
        # The SDK's own validation (and dateutil's) raise assorted types on bad input.
        raise InvalidEvent("malformed_event", f"invalid CloudEvent: {str(exc)[:300]}") from None


def _from_binary(lowered: dict[str, str], body: bytes, decode_data: bool, max_attributes: int) -> CloudEvent:
    missing = [a for a in (f"ce-{r}" for r in REQUIRED) if not lowered.get(a)]
    if missing:
        raise InvalidEvent("missing_attribute", f"missing CloudEvent header(s): {', '.join(missing)}")
    _check_specversion(unquote(lowered["ce-specversion"]))
    for header, value in lowered.items():
        if header.startswith("ce-") and header[3:] not in CONTEXT_ATTRIBUTES:
            _check_extension_name(header[3:], f"header {header[:40]!r}")
    if "ce-time" in lowered:
        _check_time(unquote(lowered["ce-time"]))  # percent-decoded, as the SDK reads it
    # The SDK percent-decodes the headers and validates the attributes; the body we decode
    # ourselves, because the SDK silently turns undecodable JSON into a string (we want a 400
    # instead), text bodies into str (we want the bytes as sent), and parses JSON unbounded.
    headers = {k: v for k, v in lowered.items() if k.startswith("ce-") or k == "content-type"}
    event = ce_http.from_binary(ce_http.HTTPMessage(headers=headers, body=b""), _FORMAT, CloudEvent)
    attributes = event.get_attributes()
    _check_attributes(attributes, max_attributes)
    data = _decode_data(body, event.get_datacontenttype()) if decode_data else (bytes(body) or None)
    return CloudEvent(attributes, data)


def _from_structured(body: bytes, max_attributes: int) -> CloudEvent:
    try:
        document = limits.loads(body or b"null")
    except ValueError as exc:
        raise InvalidEvent("malformed_event", f"structured event body is not acceptable JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidEvent("malformed_event", "structured event body must be a JSON object")
    missing = [a for a in REQUIRED if document.get(a) is None or document.get(a) == ""]
    if missing:
        raise InvalidEvent("missing_attribute", f"missing CloudEvent attribute(s): {', '.join(missing)}")
    attributes: dict[str, Any] = {}
    for name, value in document.items():
        if name in ("data", "data_base64") or value is None:
            continue  # JSON null: the attribute is absent (CloudEvents JSON format)
        if name in CONTEXT_ATTRIBUTES:
            if not isinstance(value, str):
                raise InvalidEvent("invalid_attribute",
                                   f"attribute {name!r} must be a string, not a JSON {_json_type(value)}")
            attributes[name] = value
        else:
            _check_extension_name(name, f"attribute {name[:40]!r}")
            attributes[name] = _extension_value(name, value)
    _check_specversion(attributes["specversion"])
    if "time" in attributes:
        attributes["time"] = _check_time(attributes["time"])
    _check_attributes({"time": None, **attributes}, max_attributes)  # time: set below when absent
    data = document.get("data")
    encoded = document.get("data_base64")
    if encoded is not None:
        if data is not None:
            raise InvalidEvent("malformed_event", "a structured event carries data or data_base64, not both")
        if not isinstance(encoded, str):
            raise InvalidEvent("malformed_event", "data_base64 must be a base64 string")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidEvent("malformed_event", "data_base64 is not valid base64") from None
    return CloudEvent(attributes, data)


def _json_type(value: object) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _check_specversion(value: object) -> None:
    if value != SPECVERSION:
        shown = value[:20] if isinstance(value, str) else value
        raise InvalidEvent("invalid_attribute",
                           f"specversion {shown!r} is not supported; this service takes CloudEvents {SPECVERSION}")


def _check_extension_name(name: str, where: str) -> None:
    if _EXTENSION_NAME.fullmatch(name) is None:
        raise InvalidEvent("invalid_attribute",
                           f"{where}: extension names are 1-20 lowercase ASCII letters or digits")


def _extension_value(name: str, value: object) -> str:
    """A structured-mode extension value as the string it would be in binary mode."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and _INT32[0] <= value <= _INT32[1]:
        return str(value)
    if isinstance(value, str):
        return value
    raise InvalidEvent("invalid_attribute",
                       f"extension {name!r} must be a string, a 32-bit integer or a boolean, "
                       f"not a JSON {_json_type(value)}" + (" out of range" if isinstance(value, int) else ""))


def _check_time(value: str) -> datetime:
    if _RFC3339.fullmatch(value) is None:
        raise InvalidEvent("invalid_attribute", f"time {value[:40]!r} is not an RFC 3339 timestamp")
    try:
        return isoparse(value.replace(" ", "T").upper())
    except (ValueError, OverflowError) as exc:
        raise InvalidEvent("invalid_attribute", f"time {value[:40]!r}: {exc}") from None


def _check_attributes(attributes: Mapping[str, Any], max_attributes: int = MAX_ATTRIBUTES) -> None:
    if len(attributes) > max_attributes:
        raise InvalidEvent("invalid_attribute",
                           f"{len(attributes)} attributes (time included); at most {max_attributes} are accepted")
    for name, value in attributes.items():
        if not isinstance(value, str):
            continue  # time, already checked
        if len(value) > MAX_ATTRIBUTE_BYTES or len(value.encode("utf-8", "surrogatepass")) > MAX_ATTRIBUTE_BYTES:
            raise InvalidEvent("invalid_attribute",
                               f"attribute {name!r} is longer than {MAX_ATTRIBUTE_BYTES} bytes")
        if _CONTROL.search(value):
            raise InvalidEvent("invalid_attribute", f"attribute {name!r} contains control characters")
        if name in CONTEXT_ATTRIBUTES and name != "specversion" and value == "":
            raise InvalidEvent("invalid_attribute", f"attribute {name!r} must not be empty")
        if name == "datacontenttype" and _MEDIA_TYPE.fullmatch(value) is None:
            raise InvalidEvent("invalid_attribute",
                               f"datacontenttype {value[:60]!r} is not a media type like application/json")


def is_json(content_type: str | None) -> bool:
    return content_type is None or JSONFormat.JSON_CONTENT_TYPE_PATTERN.match(content_type) is not None


def _decode_data(body: bytes, content_type: str | None) -> Any:
    if not body:
        return None
    if not is_json(content_type):
        return bytes(body)
    try:
        return limits.loads(body)
    except ValueError as exc:
        raise InvalidEvent("malformed_data", f"event data is not valid JSON: {exc}") from None


def to_binary(event: BaseCloudEvent) -> tuple[dict[str, str], bytes]:
    data = event.get_data()
    if isinstance(data, (bytes, bytearray, str)) or data is None or not is_json(event.get_datacontenttype()):
        message = ce_http.to_binary(event, _FORMAT)
        return dict(message.headers), message.body
    # The SDK writes JSON only for dict data (a list would come out as its Python repr).
    message = ce_http.to_binary(CloudEvent(event.get_attributes(), None), _FORMAT)
    headers = dict(message.headers)
    headers["content-type"] = event.get_datacontenttype() or "application/json"
    return headers, json.dumps(data, separators=(",", ":")).encode()


def to_structured(event: BaseCloudEvent) -> tuple[dict[str, str], bytes]:
    message = ce_http.to_structured(event, _FORMAT)
    return dict(message.headers), message.body
