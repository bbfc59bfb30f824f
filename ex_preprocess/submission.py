"""Where the image of an input event is (the event's own concern, not Skylark's).

- a binary body (``content-type: image/jpeg`` or ``image/png``): the image itself — also what
  a PingSource with ``dataBase64`` sends;
- JSON ``{"image_base64": "..."}``: the image, base64;
- JSON ``{"ref": {"chain": c, "function": f, "field": x, "node": n?}}``: an image that already is
  Skylark state, read locally or from ``node``.

The chain comes from ``skylarkchain`` or ``data.chain`` (the SDK), else a new one is started.
"""

from __future__ import annotations

import base64
import binascii

from skylark.sdk import Context, InputError
from skylark.state.errors import BundleNotFound
from skylark.state.names import validate_name


def _decoded(raw: object) -> bytes:
    if not isinstance(raw, str):
        raise InputError("invalid_image", "data.image_base64 must be a base64 string")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("invalid_image", "data.image_base64 is not valid base64") from None


def _referenced(ctx: Context, raw: object) -> bytes:
    if not isinstance(raw, dict):
        raise InputError("invalid_ref", "data.ref must be an object {chain, function, field, node?}")
    try:
        chain = validate_name("ref.chain", raw.get("chain", ctx.chain))
        function = validate_name("ref.function", raw.get("function"))
        field = validate_name("ref.field", raw.get("field"))
        node = validate_name("ref.node", raw["node"]) if raw.get("node") is not None else None
    except ValueError as exc:
        raise InputError("invalid_ref", str(exc)) from None
    bundle = ctx.read(function, chain=chain, node=node)
    if field not in bundle.fields:
        raise BundleNotFound(chain, f"{function}.{field}", where=bundle.meta.node)
    return bundle.fields[field]


def read_image(ctx: Context) -> bytes:
    """The image bytes the event carries or points to; 400 (or 404 for a ref) otherwise."""
    if isinstance(ctx.data, (bytes, bytearray)):
        if not ctx.data:
            raise InputError("missing_image", "the event body is empty")
        return bytes(ctx.data)
    data = ctx.json()
    has_inline, has_ref = "image_base64" in data, "ref" in data
    if has_inline == has_ref:
        raise InputError("missing_image" if not has_inline else "ambiguous_image",
                         "data must have exactly one of image_base64 or ref")
    return _decoded(data["image_base64"]) if has_inline else _referenced(ctx, data["ref"])
