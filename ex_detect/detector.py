"""A real, offline detector: OpenCV's Haar cascades and HOG people detector (no I/O per call).

The models ship inside the ``opencv-python-headless`` wheel (``cv2.data.haarcascades`` and
``cv2.HOGDescriptor_getDefaultPeopleDetector()``; OpenCV 5 dropped both, hence ``<5``);
:meth:`Detector.load` reads them once, nothing is downloaded.

Classes: ``face`` (haarcascade_frontalface_default), ``upper_body`` (haarcascade_upperbody),
``person`` (HOG + linear SVM, Dalal & Triggs, 64×128 window).

Scores in [0, 1), comparable within a class, a monotone function of the detector's own evidence:

- Haar: ``n / (n + k)`` where ``n`` is the number of raw overlapping hits merged into the box
  (``detectMultiScale2``'s ``numDetections``, the classic Viola-Jones confidence) and ``k``
  (``half_score_neighbors``, default 10) the count that scores 0.5. We measured the alternative,
  the last-stage weight from ``detectMultiScale3(..., outputRejectLevels=True)``, on the sample
  images: it does not separate faces from false hits (astronaut's face: margin 10.4 over the
  stage threshold, coins false positives up to 8.5; every upper-body hit ≈ 31), while the
  neighbour count does (face 44, false hits ≤ 12).
- HOG: ``1 − exp(−w)`` where ``w`` is the SVM decision value above the hit threshold (0 at the
  decision boundary, 0.63 at margin 1, 0.86 at 2).

Boxes are ``[x, y, w, h]`` in the pixel coordinates of the (upright) original image.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

HAAR_MODELS = {
    "face": "haarcascade_frontalface_default.xml",
    "upper_body": "haarcascade_upperbody.xml",
}
HOG_CLASS = "person"
HOG_WINDOW = (64, 128)  # width, height of the default people detector
CLASSES = (*HAAR_MODELS, HOG_CLASS)


class ModelUnavailable(RuntimeError):
    """A model file of the OpenCV wheel is missing or unreadable (an install problem)."""


@dataclass(frozen=True)
class Detection:
    cls: str
    box: tuple[int, int, int, int]  # x, y, w, h
    score: float
    detector: str

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.cls, "box": list(self.box), "score": round(self.score, 4),
                "detector": self.detector}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Detection":
        x, y, w, h = (int(v) for v in raw["box"])
        return cls(str(raw["class"]), (x, y, w, h), float(raw["score"]), str(raw.get("detector", "")))


@dataclass(frozen=True)
class DetectorOptions:
    classes: tuple[str, ...] = CLASSES
    scale_factor: float = 1.1        # Haar image pyramid step
    min_neighbors: int = 4           # Haar: raw hits a box needs to be kept
    half_score_neighbors: int = 10   # Haar: neighbour count that scores 0.5
    hog_scale: float = 1.05          # HOG image pyramid step
    min_score: float = 0.2           # detections below are dropped
    nms_iou: float = 0.3             # same-class boxes overlapping more are merged (across tiles)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.classes) - set(CLASSES))
        if unknown:
            raise ValueError(f"unknown detector class(es) {', '.join(unknown)}; known: {', '.join(CLASSES)}")
        if not self.classes:
            raise ValueError("at least one detector class is needed")
        if self.scale_factor <= 1 or self.hog_scale <= 1:
            raise ValueError("pyramid scale factors must be > 1")
        if self.min_neighbors < 1 or self.half_score_neighbors < 1:
            raise ValueError("neighbour counts must be >= 1")
        if not 0 <= self.min_score < 1 or not 0 < self.nms_iou <= 1:
            raise ValueError("min_score must be in [0, 1) and nms_iou in (0, 1]")


@dataclass(frozen=True)
class View:
    """A grayscale image to run on and how its pixels map to the original:
    ``original = (view + offset) / scale``."""

    gray: np.ndarray
    scale: float
    offset: tuple[int, int] = (0, 0)


def haar_score(neighbors: int, half: int) -> float:
    return neighbors / (neighbors + half)


def hog_score(weight: float) -> float:
    return 1.0 - math.exp(-max(0.0, weight))


class Detector:
    """Loaded models. ``detect*`` are safe to call from many threads (OpenCV's cascade keeps
    per-image state inside the classifier, so calls are serialised; each call is itself
    parallelised by OpenCV across the cores)."""

    def __init__(self, options: DetectorOptions, cascades: dict[str, cv2.CascadeClassifier],
                 hog: cv2.HOGDescriptor | None) -> None:
        self.options = options
        self._cascades = cascades
        self._hog = hog
        self._lock = threading.Lock()

    @classmethod
    def load(cls, options: DetectorOptions, cascade_dir: str | None = None) -> "Detector":
        """Read the models from the OpenCV wheel (once per process: the function's start hook)."""
        folder = Path(cascade_dir or cv2.data.haarcascades)
        cascades = {}
        for name in options.classes:
            if name not in HAAR_MODELS:
                continue
            path = folder / HAAR_MODELS[name]
            classifier = cv2.CascadeClassifier(str(path))
            if classifier.empty():
                raise ModelUnavailable(f"cannot load the {name} cascade from {path}")
            cascades[name] = classifier
        hog = None
        if HOG_CLASS in options.classes:
            hog = cv2.HOGDescriptor()
            hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        return cls(options, cascades, hog)

    @property
    def classes(self) -> tuple[str, ...]:
        return (*self._cascades, *((HOG_CLASS,) if self._hog is not None else ()))

    def detect(self, gray: np.ndarray) -> list[Detection]:
        """Detections in ``gray``'s own pixel coordinates (scores above ``min_score``)."""
        if gray.ndim != 2 or gray.dtype != np.uint8:
            raise ValueError("detect needs a 2-D uint8 grayscale image")
        o = self.options
        found: list[Detection] = []
        height, width = gray.shape
        with self._lock:
            for name, cascade in self._cascades.items():
                win_w, win_h = cascade.getOriginalWindowSize()
                if width < win_w or height < win_h:
                    continue
                boxes, neighbors = cascade.detectMultiScale2(
                    gray, scaleFactor=o.scale_factor, minNeighbors=o.min_neighbors)
                for box, n in zip(boxes, np.ravel(neighbors)):
                    found.append(Detection(name, tuple(int(v) for v in box),
                                           haar_score(int(n), o.half_score_neighbors), f"haar:{name}"))
            if self._hog is not None and width >= HOG_WINDOW[0] and height >= HOG_WINDOW[1]:
                boxes, weights = self._hog.detectMultiScale(
                    gray, winStride=(8, 8), padding=(8, 8), scale=o.hog_scale)
                for box, weight in zip(boxes, np.ravel(weights)):
                    found.append(Detection(HOG_CLASS, tuple(int(v) for v in box),
                                           hog_score(float(weight)), "hog:people"))
        return [d for d in found if d.score >= o.min_score]

    def detect_views(self, views: Sequence[View]) -> list[Detection]:
        """Run on each view, map boxes to original coordinates, merge duplicates per class."""
        mapped: list[Detection] = []
        for view in views:
            ox, oy = view.offset
            for d in self.detect(view.gray):
                x, y, w, h = d.box
                box = (round((x + ox) / view.scale), round((y + oy) / view.scale),
                       max(1, round(w / view.scale)), max(1, round(h / view.scale)))
                mapped.append(Detection(d.cls, box, d.score, d.detector))
        return non_max_suppression(mapped, self.options.nms_iou)


def non_max_suppression(detections: Sequence[Detection], iou: float) -> list[Detection]:
    """Per class, keep the best-scoring of boxes that overlap by more than ``iou``; best first."""
    kept: list[Detection] = []
    for cls in sorted({d.cls for d in detections}):
        group = [d for d in detections if d.cls == cls]
        indices = cv2.dnn.NMSBoxes([list(d.box) for d in group], [d.score for d in group], 0.0, iou)
        kept.extend(group[int(i)] for i in np.ravel(indices))
    return sorted(kept, key=lambda d: (-d.score, d.cls, d.box))
