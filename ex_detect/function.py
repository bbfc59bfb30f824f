"""The detect function: the chain's preprocessed image → detections stored as chain state."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import cv2
import numpy as np
from cloudevents.core.base import BaseCloudEvent

from eventing import catalogue
from ex_detect.config import FUNCTION, SOURCE_FUNCTION, DetectSettings
from ex_detect.detector import Detection, Detector, View
from skylark.state.bundle import Bundle
from skylark.fn import StatefulFunction, Handled, StageTimings, chain_of, data_object
from skylark.fn import origin_of, result_data, result_event, route_of, size_hint, trace_of, version_of
from skylark.serving.web import ClientError


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


class DetectFunction(StatefulFunction):
    name = FUNCTION
    accepts = (catalogue.PREPROCESS_COMPLETED,)

    settings: DetectSettings
    detector: Detector | None = None

    def start(self) -> None:
        self.detector = Detector.load(self.settings.detector)  # the models, once per process
        super().start()

    def alive(self) -> bool:
        return self.detector is not None  # the models loaded at start; nothing works without them

    def ready(self) -> tuple[bool, dict[str, Any]]:
        ok, detail = super().ready()
        return ok and self.detector is not None, {**detail, "models": list(self.detector.classes)}

    def handle(self, event: BaseCloudEvent) -> Handled:
        data = data_object(event)
        chain = chain_of(event, data)
        origin = origin_of(event, data)
        trace, route = trace_of(data), route_of(data)
        node = self.settings.core.node

        read = self.state.read(chain, SOURCE_FUNCTION, origin, version_of(event), size_hint(data))  # 404 when nobody has it

        start = time.perf_counter()
        try:
            views, info = views_of(read.bundle, self.settings.use_tiles)
        except InvalidState as exc:
            raise ClientError(422, "invalid_state", str(exc)) from None
        detections = self.detector.detect_views(views)
        compute_ms = (time.perf_counter() - start) * 1000

        stats = summary(detections)
        record = {
            "source": {"function": SOURCE_FUNCTION, "version": read.bundle.version, "node": read.bundle.meta.node},
            "original": info.get("original"), "views": len(views), **stats,
            "timings": {"fetch_ms": round(read.elapsed_ms, 3), "fetch_location": read.location,
                        "fetch_node": read.node, "compute_ms": round(compute_ms, 3)},
        }
        fields = {
            "detections": json.dumps([d.to_dict() for d in detections], separators=(",", ":")),
            "info": json.dumps(record, separators=(",", ":")),
        }
        start = time.perf_counter()
        put = self.state.store.put(chain, FUNCTION, fields, replace=True)
        store_ms = (time.perf_counter() - start) * 1000

        timings = StageTimings(FUNCTION, node, read.location, read.node, read.elapsed_ms,
                               compute_ms, store_ms, put.meta.version)
        out = result_event(catalogue.DETECT_COMPLETED, cause=event, chain=chain, timings=timings,
                           data=result_data(chain, timings, trace, route, size=put.meta.size, **stats))
        return Handled(out, "completed", timings, chain, {"detections": stats["count"]})
