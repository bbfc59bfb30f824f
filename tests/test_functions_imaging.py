"""ex_preprocess's pure parts: image normalisation and guards, and reading input events."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from eventing import catalogue
from eventing.http import new_event
from ex_preprocess.config import PreprocessSettings
from ex_preprocess.imaging import ImageOptions, ImageTooLarge, InvalidImage, normalise, tile_origins
from ex_preprocess.submission import StateRef, read_submission
from skylark.state.errors import ConfigError
from skylark.serving.web import ClientError
from functions_fixtures import astronaut, blank, chelsea, encode, header_only_png, noise


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
    s = PreprocessSettings.from_env({"SKYLARK_NODE": "n1", "SKYLARK_PREPROCESS_SIZE": "256",
                                     "SKYLARK_PREPROCESS_MAX_PIXELS": "1000000",
                                     "SKYLARK_PREPROCESS_TILE_MAX_SIDE": "0",
                                     "SKYLARK_PREPROCESS_FORMATS": "png"})
    assert s.image == ImageOptions(size=256, max_pixels=1_000_000, tile_max_side=0, formats=("PNG",))
    assert s.core.node == "n1"
    for bad in ({"SKYLARK_PREPROCESS_SIZE": "8"}, {"SKYLARK_PREPROCESS_SIZE": "big"},
                {"SKYLARK_PREPROCESS_FORMATS": "JPEG,TIFF"}):
        with pytest.raises(ConfigError):
            PreprocessSettings.from_env(bad)


# -- input events ------------------------------------------------------------------------------


def test_submission_with_inline_image_trace_and_route():
    image = encode(blank())
    event = new_event(catalogue.IMAGE_SUBMITTED, "/c", {
        "chain": "c-1", "image_base64": base64.b64encode(image).decode(), "route": ["node-b", "node-c"],
        "trace": [{"function": "camera"}]})
    s = read_submission(event)
    assert (s.chain, s.image, s.ref, s.route, s.trace) == ("c-1", image, None, ["node-b", "node-c"],
                                                           [{"function": "camera"}])


def test_submission_by_reference_defaults_to_its_own_chain():
    event = new_event(catalogue.IMAGE_SUBMITTED, "/c", {
        "chain": "c-2", "ref": {"function": "camera", "field": "frame", "node": "node-b"}})
    assert read_submission(event).ref == StateRef("c-2", "camera", "frame", "node-b")


def test_pingsource_binary_body_derives_the_chain_from_the_event_id():
    image = encode(blank())
    event = new_event(catalogue.PING, "/apis/v1/namespaces/default/pingsources/camera", image,
                      id_="6f2c1a52-1b1e-4f5e-9a34-2f1f6a6f7e11", datacontenttype="image/jpeg")
    s = read_submission(event)
    assert s.chain == "ping-6f2c1a52-1b1e-4f5e-9a34-2f1f6a6f7e11" and s.image == image
    odd = new_event(catalogue.PING, "/p", image, id_="has spaces/and:colons", datacontenttype="image/jpeg")
    assert read_submission(odd).chain.startswith("ping-")
    json_ping = new_event(catalogue.PING, "/p", {"image_base64": base64.b64encode(image).decode()}, id_="x1")
    assert read_submission(json_ping).chain == "ping-x1"


def test_binary_image_submitted_takes_the_chain_from_the_extension():
    image = encode(blank())
    event = new_event(catalogue.IMAGE_SUBMITTED, "/c", image, datacontenttype="image/png", skylarkchain="c-3")
    assert read_submission(event).chain == "c-3"


@pytest.mark.parametrize(("data", "code"), [
    ({"image_base64": "AAAA"}, "missing_chain"),
    ({"chain": "bad chain!", "image_base64": "AAAA"}, "invalid_chain"),
    ({"chain": "c"}, "missing_image"),
    ({"chain": "c", "image_base64": "AAAA", "ref": {"function": "f", "field": "x"}}, "ambiguous_image"),
    ({"chain": "c", "image_base64": "not base64 at all!"}, "invalid_image"),
    ({"chain": "c", "image_base64": 42}, "invalid_image"),
    ({"chain": "c", "ref": {"function": "f"}}, "invalid_ref"),
    ({"chain": "c", "ref": "camera/frame"}, "invalid_ref"),
    ({"chain": "c", "image_base64": "AAAA", "route": "node-b"}, "invalid_route"),
    ({"chain": "c", "image_base64": "AAAA", "route": ["ok", "not ok"]}, "invalid_route"),
    ({"chain": "c", "image_base64": "AAAA", "trace": [1, 2]}, "invalid_trace"),
])
def test_bad_submissions_are_400_with_a_code(data, code):
    with pytest.raises(ClientError) as info:
        read_submission(new_event(catalogue.IMAGE_SUBMITTED, "/c", data))
    assert (info.value.status, info.value.code) == (400, code)


def test_binary_submission_without_chain_and_chain_mismatch_are_400():
    image = encode(blank())
    with pytest.raises(ClientError, match="names no chain"):
        read_submission(new_event(catalogue.IMAGE_SUBMITTED, "/c", image, datacontenttype="image/png"))
    mismatch = new_event(catalogue.IMAGE_SUBMITTED, "/c", {"chain": "a", "image_base64": "AAAA"}, skylarkchain="b")
    with pytest.raises(ClientError) as info:
        read_submission(mismatch)
    assert info.value.code == "chain_mismatch"
