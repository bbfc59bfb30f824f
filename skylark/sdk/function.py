"""The function object an author writes (knative/func style): ``handle`` and four small hooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # only for the annotations: no import cycle at run time
    from skylark.sdk.config import Config
    from skylark.sdk.context import Context, Emit

__all__ = ["Function"]


class Function:
    """Base class of a Skylark function.

    Set ``name`` (the default name of its state; the workflow's name for it wins) and
    ``accepts`` (the event types it takes; the workflow's list wins), then write ``handle``::

        class Score(Function):
            name = "score"
            accepts = ("io.example.enriched",)

            def start(self, config):
                self.threshold = config.float("threshold", 0.5)

            def handle(self, ctx):
                features = json.loads(ctx.input.fields["features"])
                score = model(features)
                ctx.state.put({"score": str(score).encode()})
                return ctx.emit("io.example.scored", {"score": score})

    The SDK serves it (``skylark serve function MODULE:FACTORY``): it parses the CloudEvent,
    reads the input state where the policy put it, times fetch / compute / store, builds and
    publishes the result event, dedupes redeliveries, maps errors to HTTP answers, and serves
    ``/healthz``, ``/readyz`` and ``/metrics``. ``start`` runs once per process, before the first
    event; ``stop`` when the process ends.
    """

    name: ClassVar[str] = ""
    accepts: ClassVar[Sequence[str]] = ()
    emits: ClassVar[Sequence[str]] = ()  # informative; the workflow's list wins (``ctx.emits``)
    # The largest request body this function takes (the event with its data); 413 above.
    max_request_bytes: ClassVar[int] = 1024 * 1024

    def start(self, config: Config) -> None:
        """Load models, open what ``handle`` needs (once per process, never at import)."""

    def stop(self) -> None:
        """Release what ``start`` opened."""

    def alive(self) -> bool:
        """Liveness, without I/O: False only when the process cannot recover by itself."""
        return True

    def ready(self) -> bool:
        """Readiness of the function itself (the SDK adds the node's Redis)."""
        return True

    def handle(self, ctx: Context) -> Emit | Sequence[Emit] | None:
        """Do the work for one event; return ``ctx.emit(...)`` (or several, or None)."""
        raise NotImplementedError(f"{type(self).__name__}.handle")
