"""The function SDK: write the work, Skylark does the plumbing.

::

    from skylark.sdk import Function

    class Score(Function):
        name = "score"
        accepts = ("io.example.enriched",)

        def start(self, config):
            self.threshold = config.float("threshold", 0.5)

        def handle(self, ctx):
            features = json.loads(ctx.input.fields["features"])   # the predecessor's state
            ctx.state.put({"score": b"0.93"})                     # this function's state
            return ctx.emit("io.example.scored", {"score": 0.93})

    $ skylark serve function mypkg.functions:Score

See ``docs/functions.md`` ("Write your own function").
"""

from skylark.sdk.app import FunctionSettings, create_app, load_function
from skylark.sdk.config import Config
from skylark.sdk.context import Context, Emit, InputError, StateAccess, StateError, check_stream
from skylark.sdk.function import Function

__all__ = [
    "Config",
    "Context",
    "Emit",
    "Function",
    "FunctionSettings",
    "InputError",
    "StateAccess",
    "StateError",
    "check_stream",
    "create_app",
    "load_function",
]
