"""Compression chosen per link: zstd where it saves more time on the wire than it costs in CPU.

A push to a target whose link (the bottleneck of the min-latency path, from the topology) is
slow is compressed when the time the bytes saved take on that link, ``saved × 8 / bandwidth``,
is more than the CPU time of compressing them here and decompressing them there. On fast links
(loopback, 10 Gbit/s) the answer is no before anything is compressed: even squeezing every byte
away would save less than compressing costs (:meth:`Compressor.may_pay`). Fields that do not
shrink by a tenth (already-compressed images, random bytes) are sent raw; a large field is first
tried on a sample of its start, so a 5 MB JPEG costs a 64 KiB trial, not a full compression.

zstd level 1: on this machine ~230 MB/s compressing and ~600 MB/s decompressing JSON, 4.7×
smaller; numeric arrays 1.1-3.5×; random bytes not at all (and at 4.5 GB/s). The compression
speed is learned from the compressions made (decompression is taken as 0.4 of it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import zstandard

LEVEL = 1
MIN_FIELD_BYTES = 1024   # below this a zstd frame's own bytes eat what it saves
SHRINK = 0.9             # sent compressed only when at most this share of the value
SAMPLE_BYTES = 64 * 1024
DECOMPRESS_SHARE = 0.4   # decompression CPU as a share of compression CPU (zstd -1 here: 0.35-0.5)


@dataclass(frozen=True)
class Compressed:
    """zstd frames for the fields worth it, and what compressing every field tried cost."""

    frames: dict[str, bytes] = field(repr=False)
    value_bytes: int      # bytes of every field offered
    saved_bytes: int      # bytes the frames save over their values
    seconds: float        # CPU (wall) time spent compressing


class Compressor:
    """Thread-safe: a zstd context per call (cheap), the learned speed updated under the GIL."""

    def __init__(self, *, level: int = LEVEL, enabled: bool = True) -> None:
        self.level = level
        self.enabled = enabled
        self.seconds_per_byte = 1 / 200e6  # until measured

    def _cpu_s(self, nbytes: int) -> float:
        return nbytes * self.seconds_per_byte * (1 + DECOMPRESS_SHARE)

    def may_pay(self, nbytes: int, bandwidth_mbps: float | None) -> bool:
        """Whether compressing ``nbytes`` for a link of this bandwidth can pay at all: even if
        every byte were saved, the link time saved must exceed the CPU time."""
        if not self.enabled or not bandwidth_mbps or nbytes < MIN_FIELD_BYTES:
            return False
        return nbytes * 8 / (bandwidth_mbps * 1e6) > self._cpu_s(nbytes)

    def compress(self, fields: Mapping[str, bytes]) -> Compressed:
        context = zstandard.ZstdCompressor(level=self.level)
        frames: dict[str, bytes] = {}
        tried = saved = 0
        start = time.perf_counter()
        for name, value in fields.items():
            if len(value) < MIN_FIELD_BYTES:
                continue
            if len(value) > 4 * SAMPLE_BYTES:
                sample = value[:SAMPLE_BYTES]
                tried += len(sample)
                if len(context.compress(sample)) > SHRINK * len(sample):
                    continue  # incompressible (an image, random bytes): not worth a full pass
            packed = context.compress(value)
            tried += len(value)
            if len(packed) <= SHRINK * len(value):
                frames[name] = packed
                saved += len(value) - len(packed)
        seconds = time.perf_counter() - start
        if tried >= SAMPLE_BYTES:
            # A moving average: one slow call (a busy machine) does not switch compression off.
            self.seconds_per_byte = 0.8 * self.seconds_per_byte + 0.2 * (seconds / tried)
        return Compressed(frames, sum(len(v) for v in fields.values()), saved, seconds)

    def pays(self, compressed: Compressed, bandwidth_mbps: float | None) -> bool:
        """Whether sending ``compressed`` over this link beats sending the values raw: the link
        time of the bytes saved against the CPU spent here and to be spent decompressing."""
        if not compressed.frames or not bandwidth_mbps:
            return False
        link_s = compressed.saved_bytes * 8 / (bandwidth_mbps * 1e6)
        return link_s > compressed.seconds * (1 + DECOMPRESS_SHARE)
