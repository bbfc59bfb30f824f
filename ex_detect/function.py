"""Example function 2: the chain's preprocessed image → detections stored as chain state."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import cv2
import numpy as np

from ex_detect.detector import CLASSES, Detection, Detector, DetectorOptions, View
from skylark.sdk import Config, Context, Emit, Function, StateError
from skylark.state.bundle import Bundle

PREPROCESS_COMPLETED = "io.skylark.preprocess.completed"
DETECT_COMPLETED = "io.skylark.detect.completed"


class InvalidState(ValueError):
    """The preprocess bundle exists but is not what preprocess writes."""


def _gray(png: bytes, what: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise InvalidState(f"{what} is not a decodable image")
    return image


def views_of(bundle: Bundle, use_tiles: bool) -> tuple[list[View], dict[str, Any]]:
    """The images to detect on (overview, then tiles) and the preprocess info, from its bundle."""
    fields = bundle.fields
    if "image" not in fields or "info" not in fields:
        raise InvalidState("the preprocess bundle has no image or info field")
    try:
        info = json.loads(fields["info"])
        scale = float(info["image"]["scale"])
        tiles = json.loads(fields["tiles"]) if use_tiles and "tiles" in fields else []
        tile_scale = float(info["tile_scale"]) if tiles else 0.0
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidState(f"unreadable preprocess info: {exc}") from None
    views = [View(_gray(fields["image"], "field image"), scale)]
    for tile in tiles:
        try:
            png = fields[tile["field"]]
            offset = (int(tile["x"]), int(tile["y"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidState(f"tile entry {tile!r} does not match the bundle: {exc}") from None
        views.append(View(_gray(png, f"field {tile['field']}"), tile_scale, offset))
    return views, info


def summary(detections: list[Detection]) -> dict[str, Any]:
    counts = Counter(d.cls for d in detections)
    best: dict[str, float] = {}
    for d in detections:
        best[d.cls] = max(best.get(d.cls, 0.0), round(d.score, 4))
    return {"count": len(detections), "classes": dict(counts), "max_score": best}


def detector_options(config: Config) -> DetectorOptions:
    d = DetectorOptions()
    return DetectorOptions(
        classes=config.list("classes", CLASSES),
        min_neighbors=config.int("min_neighbors", d.min_neighbors, minimum=1),
        half_score_neighbors=config.int("half_score_neighbors", d.half_score_neighbors, minimum=1),
        min_score=config.float("min_score", d.min_score, minimum=0.0, maximum=0.999),
    )


class Detect(Function):
    name = "detect"
    accepts = (PREPROCESS_COMPLETED,)
    detector: Detector | None = None

    def start(self, config: Config) -> None:
        self.use_tiles = config.bool("tiles", True)  # also run on the tiles of large images
        self.detector = Detector.load(detector_options(config))  # the models, once per process

    def alive(self) -> bool:
        return self.detector is not None  # nothing works without the models

    def ready(self) -> bool:
        return self.detector is not None

    def handle(self, ctx: Context) -> Emit:
        preprocessed = ctx.input
        try:
            views, info = views_of(preprocessed, self.use_tiles)
        except InvalidState as exc:
            raise StateError("invalid_state", str(exc)) from None
        detections = self.detector.detect_views(views)
        stats = summary(detections)
        record = {"source": {"function": preprocessed.meta.function, "version": preprocessed.version,
                             "node": preprocessed.meta.node},
                  "original": info.get("original"), "views": len(views), **stats}
        ctx.state.put({"detections": json.dumps([d.to_dict() for d in detections], separators=(",", ":")),
                       "info": json.dumps(record, separators=(",", ":"))})
        return ctx.emit(DETECT_COMPLETED, stats)
