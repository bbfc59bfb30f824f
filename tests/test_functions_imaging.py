"""ex_preprocess's own parts: image normalisation and guards, its config, and where an input
event's image is (``read_image``, after the SDK's reading of the event)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import xxhash
from cloudevents.core.base import BaseCloudEvent
from PIL import Image

from eventing.catalogue import PING
from eventing.http import new_event
from ex_preprocess.function import IMAGE_SUBMITTED, Preprocess, image_options
from ex_preprocess.imaging import ImageOptions, ImageTooLarge, InvalidImage, normalise, tile_origins
from ex_preprocess.submission import read_image
from functions_fixtures import astronaut, blank, chelsea, context, encode, header_only_png, noise, started
from skylark.sdk import Config, Context, FunctionSettings
from skylark.sdk.envelope import trace_of
from skylark.sdk.node import NodeState
from skylark.serving.web import ClientError
from skylark.state.errors import ConfigError
from skylark.state.peers import StaticPeers
from skylark.state.settings import Settings
from skylark.state.store import StateStore


def png_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


# -- normalisation -----------------------------------------------------------------------------


def test_astronaut_jpeg_becomes_equalised_grayscale_png_of_the_configured_size():
    result = normalise(encode(astronaut()), ImageOptions(size=256))
    image = png_image(result.png)
    assert image.mode == "L" and image.size == (256, 256)
    assert (result.width, result.height, result.scale) == (256, 256, 0.5)
    assert (result.original_width, result.original_height, result.format, result.mode) == (512, 512, "JPEG", "RGB")
    # Equalised: the full range is used and the cumulative histogram is close to a straight line
    # (much closer than for the same image merely converted to gray).
    def cdf_error(pixels: np.ndarray) -> float:
        cdf = np.cumsum(np.bincount(pixels.ravel(), minlength=256)) / pixels.size
        return float(np.mean(np.abs(cdf - np.linspace(0, 1, 256))))

    pixels = np.asarray(image)
    plain = np.asarray(Image.fromarray(astronaut()).convert("L").resize((256, 256)))
    assert pixels.min() <= 5 and pixels.max() >= 250
    assert cdf_error(pixels) < 0.02 < cdf_error(plain)
    assert result.tiles == () and set(result.fields()) == {"image"}


def test_png_input_keeps_the_aspect_ratio_and_is_scaled_up_to_the_size():
    result = normalise(encode(chelsea(), "PNG"), ImageOptions(size=512))
    assert (result.original_width, result.original_height, result.format) == (451, 300, "PNG")
    assert (result.width, result.height) == (512, 341)
    assert result.scale == pytest.approx(512 / 451)


def test_large_images_are_also_tiled_with_overlap_covering_the_working_copy():
    big = np.asarray(Image.fromarray(astronaut()).resize((2000, 1500)))
    options = ImageOptions(size=512, tile_max_side=1024)
    result = normalise(encode(big, quality=90), options)
    assert (result.width, result.height) == (512, 384)
    assert result.tile_scale == pytest.approx(1024 / 2000)
    working_w, working_h = 1024, 768
    xs = sorted({t.x for t in result.tiles})
    ys = sorted({t.y for t in result.tiles})
    assert xs == [0, 256, 512] and ys == [0, 256]
    covered = np.zeros((working_h, working_w), bool)
    for tile in result.tiles:
        assert png_image(tile.png).size == (tile.width, tile.height) == (512, 512)
        covered[tile.y:tile.y + tile.height, tile.x:tile.x + tile.width] = True
    assert covered.all()
    fields = result.fields()
    assert set(fields) == {"image", "tiles", *(f"tile.{i}" for i in range(6))}


def test_tiling_can_be_disabled_and_small_images_are_never_tiled():
    big = encode(np.asarray(Image.fromarray(astronaut()).resize((1600, 1600))))
    assert normalise(big, ImageOptions(tile_max_side=0)).tiles == ()
    assert normalise(encode(astronaut()), ImageOptions(size=256)).tiles == ()  # 512 ≤ 2 × 256


def test_tile_origins_are_even_flush_and_overlapping():
    assert tile_origins(512, 512, 64) == [0]
    assert tile_origins(300, 512, 64) == [0]
    assert tile_origins(1024, 512, 64) == [0, 256, 512]
    starts = tile_origins(2048, 512, 64)
    assert starts[0] == 0 and starts[-1] == 2048 - 512
    assert all(b - a <= 512 - 64 for a, b in zip(starts, starts[1:]))


def test_exif_orientation_is_applied_before_measuring():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise when displayed
    buffer = io.BytesIO()
    Image.fromarray(noise(300, 200)).save(buffer, "JPEG", exif=exif)
    result = normalise(buffer.getvalue(), ImageOptions(size=128))
    assert (result.original_width, result.original_height) == (200, 300)
    assert (result.width, result.height) == (85, 128)


@pytest.mark.parametrize("mode", ["RGBA", "P", "CMYK", "1"])
def test_any_pillow_mode_of_an_accepted_format_is_converted(mode):
    image = Image.fromarray(astronaut()).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    result = normalise(buffer.getvalue(), ImageOptions(size=64))
    assert png_image(result.png).mode == "L" and result.mode == mode


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"",
    b"this is plain text, not an image",
    encode(astronaut(), "GIF"),   # a real image, not an accepted format
    encode(astronaut(), "BMP"),
], ids=["empty", "text", "gif", "bmp"])
def test_not_an_accepted_image_is_invalid(data):
    with pytest.raises(InvalidImage):
        normalise(data, ImageOptions())


def test_truncated_jpeg_and_png_are_invalid():
    jpeg, png = encode(astronaut()), encode(astronaut(), "PNG")
    for data in (jpeg[: len(jpeg) // 2], png[: len(png) // 2], png[:40]):
        with pytest.raises(InvalidImage):
            normalise(data, ImageOptions())


def test_corrupt_png_is_invalid():
    png = bytearray(encode(chelsea(), "PNG"))
    png[100:400] = bytes(300)  # inside the first IDAT: the CRC no longer matches
    with pytest.raises(InvalidImage):
        normalise(bytes(png), ImageOptions())


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_too_many_pixels_is_refused_before_decoding():
    with pytest.raises(ImageTooLarge, match="above the limit of 1000000"):
        normalise(encode(blank(1200, 1000), "PNG"), ImageOptions(max_pixels=1_000_000))
    # A header-only bomb: 10000 × 10000 declared, 200 bytes sent (our limit, 40 M pixels)...
    with pytest.raises(ImageTooLarge):
        normalise(header_only_png(10_000, 10_000), ImageOptions())
    # ...and 100000 × 100000 (Pillow's own DecompressionBombError fires first)
    with pytest.raises(ImageTooLarge):
        normalise(header_only_png(100_000, 100_000), ImageOptions(max_pixels=10**12))


def test_settings_from_env_and_their_validation():
    env = {"SKYLARK_NODE": "n1", "SKYLARK_PREPROCESS_SIZE": "256", "SKYLARK_PREPROCESS_MAX_PIXELS": "1000000",
           "SKYLARK_PREPROCESS_TILE_MAX_SIDE": "0", "SKYLARK_PREPROCESS_FORMATS": "png"}
    assert FunctionSettings.from_env(env).core.node == "n1"
    with started(Preprocess(), env) as preprocess:
        assert preprocess.options == ImageOptions(size=256, max_pixels=1_000_000, tile_max_side=0, formats=("PNG",))
    # the workflow's config for the function, overridden by the environment
    declared = Config.merged("preprocess", {"size": "128", "tile_max_side": "0"}, {"SKYLARK_PREPROCESS_SIZE": "64"})
    assert image_options(declared) == ImageOptions(size=64, tile_max_side=0)
    for bad in ({"SKYLARK_PREPROCESS_SIZE": "8"}, {"SKYLARK_PREPROCESS_SIZE": "big"},
                {"SKYLARK_PREPROCESS_FORMATS": "JPEG,TIFF"}):
        with pytest.raises(ConfigError, match="preprocess"):
            with started(Preprocess(), bad):
                pass


# -- input events ------------------------------------------------------------------------------
# What the SDK does with an input event before ``handle`` (the chain, the envelope, where the
# input state is), then ``read_image``: where the image of the event is.


def ctx_of(event: BaseCloudEvent, node_state: NodeState | None = None) -> Context:
    return context(event, Preprocess(), node_state)


def derived(source: str, event_id: str) -> str:
    return "c-" + xxhash.xxh3_64_hexdigest(f"{source}\n{event_id}".encode())


def test_submission_with_inline_image_and_trace():
    image = encode(blank())
    event = new_event(IMAGE_SUBMITTED, "/c", {
        "chain": "c-1", "image_base64": base64.b64encode(image).decode(),
        "skylark": {"trace": [{"function": "camera"}]}})
    ctx = ctx_of(event)
    assert (ctx.chain, read_image(ctx)) == ("c-1", image)
    assert trace_of(event.get_data()) == [{"function": "camera"}]
    assert ctx.json() == {"chain": "c-1", "image_base64": base64.b64encode(image).decode()}  # no envelope


def test_submission_by_reference_defaults_to_its_own_chain(redis_server, redis_client):
    frame = encode(chelsea())
    StateStore(redis_client, node="node-b").put("c-2", "camera", {"frame": frame})
    StateStore(redis_client, node="node-b").put("c-0", "camera", {"frame": b"other"})
    state = NodeState(Settings(node="node-b", redis_url=redis_server.url), StaticPeers({}))
    try:
        event = new_event(IMAGE_SUBMITTED, "/c", {
            "chain": "c-2", "ref": {"function": "camera", "field": "frame", "node": "node-b"}})
        ctx = ctx_of(event, state)
        assert read_image(ctx) == frame
        assert (ctx.clock.first_read.location, ctx.clock.first_read.node) == ("local", "node-b")
        other = new_event(IMAGE_SUBMITTED, "/c", {"chain": "c-2", "ref": {"chain": "c-0", "function": "camera",
                                                                           "field": "frame"}})
        assert read_image(ctx_of(other, state)) == b"other"
    finally:
        state.close()


def test_pingsource_binary_body_derives_the_chain_from_source_and_id():
    image = encode(blank())
    source = "/apis/v1/namespaces/default/pingsources/camera"
    event = new_event(PING, source, image, id_="6f2c1a52-1b1e-4f5e-9a34-2f1f6a6f7e11", datacontenttype="image/jpeg")
    ctx = ctx_of(event)
    assert ctx.chain == derived(source, "6f2c1a52-1b1e-4f5e-9a34-2f1f6a6f7e11") and read_image(ctx) == image
    assert ctx_of(event).chain == ctx.chain  # a redelivery continues the same chain
    odd = new_event(PING, "/p", image, id_="has spaces/and:colons", datacontenttype="image/jpeg")
    assert ctx_of(odd).chain == derived("/p", "has spaces/and:colons")
    json_ping = new_event(PING, "/p", {"image_base64": base64.b64encode(image).decode()}, id_="x1")
    assert ctx_of(json_ping).chain == derived("/p", "x1") and read_image(ctx_of(json_ping)) == image
    # no chain named, in any input: derived as well
    anonymous = new_event(IMAGE_SUBMITTED, "/c", {"image_base64": "AAAA"}, id_="i1")
    assert ctx_of(anonymous).chain == derived("/c", "i1") and read_image(ctx_of(anonymous)) == bytes(3)
    binary = new_event(IMAGE_SUBMITTED, "/c", image, id_="i2", datacontenttype="image/png")
    assert ctx_of(binary).chain == derived("/c", "i2")


def test_binary_image_submitted_takes_the_chain_from_the_extension():
    image = encode(blank())
    event = new_event(IMAGE_SUBMITTED, "/c", image, datacontenttype="image/png", skylarkchain="c-3")
    ctx = ctx_of(event)
    assert ctx.chain == "c-3" and read_image(ctx) == image


def test_a_route_in_the_data_is_not_interpreted():
    event = new_event(IMAGE_SUBMITTED, "/c", {"chain": "c", "image_base64": "AAAA", "route": "node-b"})
    assert read_image(ctx_of(event)) == bytes(3)


@pytest.mark.parametrize(("data", "code"), [
    ({"chain": "bad chain!", "image_base64": "AAAA"}, "invalid_chain"),
    ({"chain": "c"}, "missing_image"),
    ({"chain": "c", "image_base64": "AAAA", "ref": {"function": "f", "field": "x"}}, "ambiguous_image"),
    ({"chain": "c", "image_base64": "not base64 at all!"}, "invalid_image"),
    ({"chain": "c", "image_base64": 42}, "invalid_image"),
    ({"chain": "c", "ref": {"function": "f"}}, "invalid_ref"),
    ({"chain": "c", "ref": {"function": "f", "field": "x", "node": "not a node"}}, "invalid_ref"),
    ({"chain": "c", "ref": "camera/frame"}, "invalid_ref"),
    ({"chain": "c", "image_base64": "AAAA", "skylark": {"trace": [1, 2]}}, "invalid_envelope"),
    ({"chain": "c", "image_base64": "AAAA", "skylark": "x"}, "invalid_envelope"),
    (["c"], "invalid_event_data"),
])
def test_bad_submissions_are_400_with_a_code(data, code):
    with pytest.raises(ClientError) as info:
        read_image(ctx_of(new_event(IMAGE_SUBMITTED, "/c", data)))
    assert (info.value.status, info.value.code) == (400, code)


def test_empty_binary_body_and_chain_mismatch_are_400():
    with pytest.raises(ClientError) as info:
        read_image(ctx_of(new_event(IMAGE_SUBMITTED, "/c", b"", datacontenttype="image/png")))
    assert (info.value.status, info.value.code) == (400, "missing_image")
    mismatch = new_event(IMAGE_SUBMITTED, "/c", {"chain": "a", "image_base64": "AAAA"}, skylarkchain="b")
    with pytest.raises(ClientError) as info:
        ctx_of(mismatch)
    assert info.value.code == "chain_mismatch"
