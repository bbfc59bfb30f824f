"""The preprocess function: input image → normalised image (+ tiles) stored as chain state."""

from __future__ import annotations

import json
import time

from cloudevents.core.base import BaseCloudEvent

from eventing import catalogue
from ex_preprocess.config import FUNCTION, PreprocessSettings
from ex_preprocess.imaging import ImageTooLarge, InvalidImage, normalise
from ex_preprocess.submission import read_submission
from skylark.state.errors import BundleNotFound
from skylark.fn import INLINE, StatefulFunction, Handled, StageTimings
from skylark.fn import result_data, result_event
from skylark.serving.web import ClientError


class PreprocessFunction(StatefulFunction):
    name = FUNCTION
    accepts = (catalogue.IMAGE_SUBMITTED, catalogue.PING)

    settings: PreprocessSettings

    def _fetch(self, submission) -> tuple[bytes, str, str, float]:
        """The image bytes and where they came from (location, node, ms)."""
        node = self.settings.core.node
        if submission.image is not None:
            return submission.image, INLINE, node, 0.0
        ref = submission.ref
        read = self.state.read(ref.chain, ref.function, ref.node)
        image = read.bundle.fields.get(ref.field)
        if image is None:
            raise BundleNotFound(ref.chain, f"{ref.function}.{ref.field}", where=read.node)
        return image, read.location, read.node, read.elapsed_ms

    def handle(self, event: BaseCloudEvent) -> Handled:
        submission = read_submission(event)
        node = self.settings.core.node
        image, location, fetch_node, fetch_ms = self._fetch(submission)

        start = time.perf_counter()
        try:
            result = normalise(image, self.settings.image)
        except InvalidImage as exc:
            raise ClientError(400, exc.code, str(exc)) from None
        except ImageTooLarge as exc:
            raise ClientError(413, exc.code, str(exc)) from None
        compute_ms = (time.perf_counter() - start) * 1000

        info = {**result.info(), "input": {"bytes": len(image), "location": location, "node": fetch_node},
                "timings": {"fetch_ms": round(fetch_ms, 3), "compute_ms": round(compute_ms, 3)}}
        fields = {**result.fields(), "info": json.dumps(info, separators=(",", ":"))}
        start = time.perf_counter()
        # replace: a rerun of the chain with a smaller image must not keep the old tile fields.
        put = self.state.store.put(submission.chain, FUNCTION, fields, replace=True)
        store_ms = (time.perf_counter() - start) * 1000

        timings = StageTimings(FUNCTION, node, location, fetch_node, fetch_ms, compute_ms, store_ms,
                               put.meta.version)
        data = result_data(
            submission.chain, timings, submission.trace, submission.route,
            fields=sorted(fields), size=put.meta.size, image=info["image"], original=info["original"],
            tiles=len(result.tiles),
        )
        out = result_event(catalogue.PREPROCESS_COMPLETED, cause=event, chain=submission.chain,
                           timings=timings, data=data)
        return Handled(out, "completed", timings, submission.chain,
                       {"version": put.meta.version, "tiles": len(result.tiles)})
