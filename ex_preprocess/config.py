"""Settings of the preprocess function (environment → frozen dataclass)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ex_preprocess.imaging import ImageOptions
from skylark.state.errors import ConfigError
from skylark.state.settings import Settings, env_int, env_list

FUNCTION = "preprocess"  # the function name under which the state is stored
ACCEPTED_FORMATS = ("JPEG", "PNG")


@dataclass(frozen=True)
class PreprocessSettings:
    core: Settings = field(default_factory=Settings)
    image: ImageOptions = field(default_factory=ImageOptions)
    max_body_bytes: int = 16 * 1024 * 1024  # largest request (the encoded image + envelope)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "PreprocessSettings":
        env = os.environ if env is None else env
        defaults = ImageOptions()
        formats = tuple(f.upper() for f in env_list(env, "SKYLARK_PREPROCESS_FORMATS", defaults.formats))
        unknown = sorted(set(formats) - set(ACCEPTED_FORMATS))
        if unknown:
            raise ConfigError(f"SKYLARK_PREPROCESS_FORMATS: {', '.join(unknown)} not supported "
                              f"(choose from {', '.join(ACCEPTED_FORMATS)})")
        try:
            image = ImageOptions(
                size=env_int(env, "SKYLARK_PREPROCESS_SIZE", defaults.size, 32),
                max_pixels=env_int(env, "SKYLARK_PREPROCESS_MAX_PIXELS", defaults.max_pixels, 1),
                tile_max_side=env_int(env, "SKYLARK_PREPROCESS_TILE_MAX_SIDE", defaults.tile_max_side, 0),
                formats=formats,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(
            core=Settings.from_env(env),
            image=image,
            max_body_bytes=env_int(env, "SKYLARK_PREPROCESS_MAX_BYTES", cls.max_body_bytes, 1024),
        )
