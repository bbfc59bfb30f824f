"""Decode and normalise an image for detection (pure: bytes in, bytes out, no I/O).

Normalisation: EXIF orientation applied, grayscale, resized so that its longest side is
``size`` pixels, histogram-equalised (contrast), encoded as PNG. Large images (longest side
above ``2 * size``) are also cut into overlapping ``size`` × ``size`` tiles of a working copy
whose longest side is at most ``tile_max_side``, so a detector can still find objects that the
downscaled overview made too small. Coordinates: ``scale`` = normalised pixels per original
pixel (of the upright original), likewise ``tile_scale``.

Guards: only the configured formats are opened (Pillow identifies by content, not by name);
the pixel count is checked from the header, before anything is decoded, so a decompression
bomb never expands; truncated or corrupt data fails the decode.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

# PNG zlib level of the stored images: 1 is ~5× faster than the default 6 for ~20 % more bytes;
# encoding sits on the critical path of every chain, the bytes only cross a link when remote.
PNG_COMPRESS_LEVEL = 1

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90°/270°


class InvalidImage(ValueError):
    """Not an image of an accepted format, or corrupt / truncated data."""

    code = "invalid_image"


class ImageTooLarge(ValueError):
    """More pixels than allowed (a decompression bomb, or just too big)."""

    code = "image_too_large"


@dataclass(frozen=True)
class ImageOptions:
    size: int = 512              # longest side of the normalised image
    max_pixels: int = 40_000_000  # width × height of the original, checked before decoding
    tile_max_side: int = 1024    # longest side of the tiled working copy; 0 disables tiling
    formats: tuple[str, ...] = ("JPEG", "PNG")

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError("size must be >= 32 pixels")
        if self.max_pixels < 1:
            raise ValueError("max_pixels must be >= 1")
        if self.tile_max_side < 0:
            raise ValueError("tile_max_side must be >= 0")

    @property
    def tile_overlap(self) -> int:
        return self.size // 8


@dataclass(frozen=True)
class Tile:
    index: int
    x: int       # position and extent in the tiled working copy
    y: int
    width: int
    height: int
    png: bytes = field(repr=False)

    @property
    def field_name(self) -> str:
        return f"tile.{self.index}"

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field_name, "x": self.x, "y": self.y, "width": self.width, "height": self.height}


@dataclass(frozen=True)
class Normalised:
    png: bytes = field(repr=False)
    width: int
    height: int
    scale: float              # normalised pixels per original pixel
    original_width: int       # of the upright (EXIF-rotated) original
    original_height: int
    format: str
    mode: str                 # the original's Pillow mode (RGB, L, P, CMYK...)
    tiles: tuple[Tile, ...] = ()
    tile_scale: float | None = None  # tile pixels per original pixel

    def info(self) -> dict[str, Any]:
        return {
            "original": {"width": self.original_width, "height": self.original_height,
                         "format": self.format, "mode": self.mode},
            "image": {"width": self.width, "height": self.height, "scale": self.scale},
            "tile_scale": self.tile_scale,
        }

    def fields(self) -> dict[str, bytes]:
        """The state fields (without ``info``, which the function adds with its timings)."""
        out = {"image": self.png}
        if self.tiles:
            out["tiles"] = _json([tile.to_dict() for tile in self.tiles])
            out.update({tile.field_name: tile.png for tile in self.tiles})
        return out


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the fewest tiles covering ``length`` with at least ``overlap`` pixels
    shared by neighbours, spread evenly (first at 0, last flush with the end)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / max(1, tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _fit(width: int, height: int, longest: int) -> tuple[int, int]:
    factor = longest / max(width, height)
    return max(1, round(width * factor)), max(1, round(height * factor))


def _encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    down = size[0] < image.width
    return image.resize(size, Image.Resampling.LANCZOS if down else Image.Resampling.BICUBIC)


def _open(data: bytes, options: ImageOptions) -> Image.Image:
    if not data:
        raise InvalidImage("empty image data")
    try:
        image = Image.open(io.BytesIO(data), formats=list(options.formats))
    except Image.DecompressionBombError as exc:  # Pillow's own (process-wide) guard
        raise ImageTooLarge(str(exc)) from None
    except UnidentifiedImageError:
        raise InvalidImage(f"not a {' or '.join(options.formats)} image") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise InvalidImage(f"unreadable image header: {exc}") from None
    pixels = image.width * image.height
    if pixels > options.max_pixels:
        raise ImageTooLarge(
            f"{image.width}×{image.height} = {pixels} pixels, above the limit of {options.max_pixels}"
        )
    return image


def normalise(data: bytes, options: ImageOptions) -> Normalised:
    """Decode ``data`` and normalise it (see the module doc). Raises InvalidImage / ImageTooLarge."""
    image = _open(data, options)
    fmt, mode = image.format or "?", image.mode
    raw_w, raw_h = image.size
    longest = max(raw_w, raw_h)  # the same after an EXIF rotation
    tiled = options.tile_max_side > options.size and longest > 2 * options.size
    working_longest = min(longest, options.tile_max_side) if tiled else options.size
    try:
        # JPEG only: let the decoder scale down by 1/2..1/8 in the DCT (much faster than a full
        # decode), never below what we need; and decode straight to grayscale.
        image.draft("L", _fit(raw_w, raw_h, min(working_longest, longest)))
        image.load()  # before reading EXIF: for PNG, getexif() would load (and hide errors)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error) as exc:
        raise InvalidImage(f"corrupt or truncated image: {exc}") from None
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, struct.error):
        orientation = 1  # unreadable EXIF: keep the pixels as stored
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    orig_w, orig_h = (raw_h, raw_w) if orientation in _SWAPS_AXES else (raw_w, raw_h)
    gray = image.convert("L")

    overview = ImageOps.equalize(_resize(gray, _fit(orig_w, orig_h, options.size)))
    tiles: tuple[Tile, ...] = ()
    tile_scale = None
    if tiled:
        working = ImageOps.equalize(_resize(gray, _fit(orig_w, orig_h, working_longest)))
        tile_scale = working.width / orig_w
        tiles = tuple(_cut_tiles(working, options.size, options.tile_overlap))
    return Normalised(
        png=_encode_png(overview), width=overview.width, height=overview.height,
        scale=overview.width / orig_w, original_width=orig_w, original_height=orig_h,
        format=fmt, mode=mode, tiles=tiles, tile_scale=tile_scale,
    )


def _cut_tiles(working: Image.Image, size: int, overlap: int) -> list[Tile]:
    tiles = []
    for y in tile_origins(working.height, size, overlap):
        for x in tile_origins(working.width, size, overlap):
            box = (x, y, min(x + size, working.width), min(y + size, working.height))
            crop = working.crop(box)
            tiles.append(Tile(len(tiles), x, y, crop.width, crop.height, _encode_png(crop)))
    return tiles
