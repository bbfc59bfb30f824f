"""Example function 1: an input image → a normalised grayscale image (+ tiles) as chain state."""

from __future__ import annotations

import json

from ex_preprocess.imaging import ImageOptions, ImageTooLarge, InvalidImage, normalise
from ex_preprocess.submission import read_image
from skylark.sdk import Config, Context, Emit, Function, InputError

IMAGE_SUBMITTED = "io.skylark.image.submitted"
PING = "dev.knative.sources.ping"  # a PingSource that sends a camera frame
PREPROCESS_COMPLETED = "io.skylark.preprocess.completed"
ACCEPTED_FORMATS = ("JPEG", "PNG")


def image_options(config: Config) -> ImageOptions:
    d = ImageOptions()
    formats = tuple(f.upper() for f in config.list("formats", d.formats))
    unknown = sorted(set(formats) - set(ACCEPTED_FORMATS))
    if unknown:
        raise ValueError(f"formats: {', '.join(unknown)} not supported (choose from {', '.join(ACCEPTED_FORMATS)})")
    return ImageOptions(size=config.int("size", d.size, minimum=32),
                        max_pixels=config.int("max_pixels", d.max_pixels, minimum=1),
                        tile_max_side=config.int("tile_max_side", d.tile_max_side, minimum=0),
                        formats=formats)


class Preprocess(Function):
    name = "preprocess"
    accepts = (IMAGE_SUBMITTED, PING)
    max_request_bytes = 16 * 1024 * 1024  # the encoded image and its envelope

    def start(self, config: Config) -> None:
        self.options = image_options(config)

    def handle(self, ctx: Context) -> Emit:
        image = read_image(ctx)
        try:
            result = normalise(image, self.options)
        except InvalidImage as exc:
            raise InputError(exc.code, str(exc)) from None
        except ImageTooLarge as exc:
            raise InputError(exc.code, str(exc), status=413) from None
        info = {**result.info(), "input": {"bytes": len(image)}}
        fields = {**result.fields(), "info": json.dumps(info, separators=(",", ":")).encode()}
        ctx.state.put(fields)  # replaces: a smaller image must not keep the old tiles
        return ctx.emit(PREPROCESS_COMPLETED, {"fields": sorted(fields), "image": info["image"],
                                               "original": info["original"], "tiles": len(result.tiles)})
