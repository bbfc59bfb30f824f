"""What an input event asks preprocess to do (pure): which chain, and where the image is.

Accepted inputs:

- ``io.skylark.image.submitted`` with JSON data ``{"chain": c, "image_base64": b64}`` or
  ``{"chain": c, "ref": {"chain": c2, "function": f, "field": x, "node": n?}}`` (an image that
  is already state: read locally, else from ``node``); or with a binary body (the image bytes,
  e.g. ``content-type: image/jpeg``) and the chain in the ``skylarkchain`` extension.
- ``dev.knative.sources.ping`` from a PingSource: with ``dataBase64`` Knative sends the decoded
  bytes as the body (binary image); with JSON ``data`` the same object as above. A PingSource
  cannot name a chain per tick, so the chain is derived from the event id unless given.

Optional in the JSON forms: ``trace`` (a list of stage timings, continued by each stage) and
``route`` (node names for the next stages, passed through unchanged).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import xxhash
from cloudevents.core.base import BaseCloudEvent

from eventing import catalogue
from skylark.fn import chain_of, data_object, route_of, trace_of
from skylark.state.names import NAME_PATTERN, validate_name
from skylark.serving.web import ClientError


@dataclass(frozen=True)
class StateRef:
    chain: str
    function: str
    field: str
    node: str | None = None


@dataclass(frozen=True)
class Submission:
    chain: str
    image: bytes | None = field(default=None, repr=False)  # inline bytes, or
    ref: StateRef | None = None                            # where the image is stored
    trace: list[dict[str, Any]] = field(default_factory=list)
    route: list[str] | None = None


def derived_chain(event: BaseCloudEvent) -> str:
    """A chain id for an event that names none: ``ping-<id>``, or a hash when the id can't be one."""
    candidate = f"ping-{event.get_id()}"
    if NAME_PATTERN.fullmatch(candidate):
        return candidate
    return "ping-" + xxhash.xxh3_64_hexdigest(f"{event.get_source()}\n{event.get_id()}".encode())


def _ref(raw: object, default_chain: str) -> StateRef:
    if not isinstance(raw, dict):
        raise ClientError(400, "invalid_ref", "data.ref must be an object {chain, function, field, node?}")
    try:
        return StateRef(
            chain=validate_name("ref.chain", raw.get("chain", default_chain)),
            function=validate_name("ref.function", raw.get("function")),
            field=validate_name("ref.field", raw.get("field")),
            node=validate_name("ref.node", raw["node"]) if raw.get("node") is not None else None,
        )
    except ValueError as exc:
        raise ClientError(400, "invalid_ref", str(exc)) from None


def _inline(raw: object) -> bytes:
    if not isinstance(raw, str):
        raise ClientError(400, "invalid_image", "data.image_base64 must be a base64 string")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(400, "invalid_image", "data.image_base64 is not valid base64") from None


def read_submission(event: BaseCloudEvent) -> Submission:
    """The submission an input event carries; :class:`ClientError` (400) when it carries none."""
    is_ping = event.get_type() == catalogue.PING
    raw = event.get_data()
    if isinstance(raw, (bytes, bytearray)):
        if not raw:
            raise ClientError(400, "missing_image", "the event body is empty")
        if is_ping and event.get_extension(catalogue.EXT_CHAIN) is None:
            return Submission(chain=derived_chain(event), image=bytes(raw))
        return Submission(chain=chain_of(event, {}), image=bytes(raw))
    data = data_object(event)
    if is_ping and "chain" not in data and event.get_extension(catalogue.EXT_CHAIN) is None:
        chain = derived_chain(event)
    else:
        chain = chain_of(event, data)
    has_inline, has_ref = "image_base64" in data, "ref" in data
    if has_inline == has_ref:
        raise ClientError(400, "missing_image" if not has_inline else "ambiguous_image",
                          "data must have exactly one of image_base64 or ref")
    return Submission(
        chain=chain,
        image=_inline(data["image_base64"]) if has_inline else None,
        ref=_ref(data["ref"], chain) if has_ref else None,
        trace=trace_of(data),
        route=route_of(data),
    )
