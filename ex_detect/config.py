"""Settings of the detect function (environment → frozen dataclass)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ex_detect.detector import CLASSES, DetectorOptions
from skylark.state.errors import ConfigError
from skylark.state.settings import Settings, env_float, env_int, env_list

FUNCTION = "detect"
SOURCE_FUNCTION = "preprocess"  # whose bundle detect reads


@dataclass(frozen=True)
class DetectSettings:
    core: Settings = field(default_factory=Settings)
    detector: DetectorOptions = field(default_factory=DetectorOptions)
    use_tiles: bool = True  # also run on the tiles preprocess stored for large images

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "DetectSettings":
        env = os.environ if env is None else env
        d = DetectorOptions()
        try:
            detector = DetectorOptions(
                classes=env_list(env, "SKYLARK_DETECT_CLASSES", CLASSES),
                min_neighbors=env_int(env, "SKYLARK_DETECT_MIN_NEIGHBORS", d.min_neighbors, 1),
                half_score_neighbors=env_int(env, "SKYLARK_DETECT_HALF_SCORE_NEIGHBORS",
                                             d.half_score_neighbors, 1),
                min_score=env_float(env, "SKYLARK_DETECT_MIN_SCORE", d.min_score, 0.0, 0.999),
            )
        except ValueError as exc:
            raise ConfigError(f"detector settings: {exc}") from None
        tiles = (env.get("SKYLARK_DETECT_TILES") or "1").strip().lower()
        if tiles not in ("0", "1", "true", "false"):
            raise ConfigError(f"SKYLARK_DETECT_TILES={tiles!r} must be 0/1/true/false")
        return cls(core=Settings.from_env(env), detector=detector, use_tiles=tiles in ("1", "true"))
