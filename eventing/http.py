"""CloudEvents over HTTP (the protocol binding), on top of the cloudevents SDK 2.x core API.

Kept apart from the event model: handlers and functions call :func:`parse` on a request's headers
and body and get a ``CloudEvent`` or an :class:`InvalidEvent` that says what is wrong (→ 400);
senders call :func:`to_binary` / :func:`to_structured` for the headers and body to POST.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

_FORMAT = JSONFormat()
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"


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


def parse(headers: Mapping[str, str], body: bytes, *, decode_data: bool = True) -> BaseCloudEvent:
    """Parse a binary- or structured-mode HTTP CloudEvent.

    Raises :class:`InvalidEvent` for anything that is not one: no CloudEvent headers and no
    structured body, missing required attributes, undecodable JSON data. With ``decode_data``
    False a binary-mode body stays the bytes as sent, unread: for a broker, which routes on the
    attributes and forwards the data untouched (as Knative's does).
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
    if binary:
        missing = [a for a in ("ce-id", "ce-source", "ce-type", "ce-specversion") if not lowered.get(a)]
        if missing:
            raise InvalidEvent("missing_attribute", f"missing CloudEvent header(s): {', '.join(missing)}")
    else:
        try:
            document = json.loads(body or b"null")
        except ValueError as exc:
            raise InvalidEvent("malformed_event", f"structured event body is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise InvalidEvent("malformed_event", "structured event body must be a JSON object")
        missing = [a for a in ("id", "source", "type", "specversion") if not document.get(a)]
        if missing:
            raise InvalidEvent("missing_attribute", f"missing CloudEvent attribute(s): {', '.join(missing)}")
    try:
        if not binary:
            return ce_http.from_http(ce_http.HTTPMessage(headers=dict(lowered), body=body), _FORMAT)
        # Binary mode: the SDK validates the attributes; the body we decode ourselves, because
        # the SDK silently turns undecodable JSON into a string (we want a 400 instead) and text
        # bodies into str (we want the bytes as sent).
        event = ce_http.from_http(ce_http.HTTPMessage(headers=dict(lowered), body=b""), _FORMAT)
        data = _decode_data(body, event.get_datacontenttype()) if decode_data else (bytes(body) or None)
        return CloudEvent(event.get_attributes(), data)
    except InvalidEvent:
        raise
    except (BaseCloudEventException, ValueError, TypeError, KeyError) as exc:
        raise InvalidEvent("malformed_event", f"invalid CloudEvent: {exc}") from None


def is_json(content_type: str | None) -> bool:
    return content_type is None or JSONFormat.JSON_CONTENT_TYPE_PATTERN.match(content_type) is not None


def _decode_data(body: bytes, content_type: str | None) -> Any:
    if not body:
        return None
    if not is_json(content_type):
        return bytes(body)
    try:
        return json.loads(body)
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
