"""The event catalogue: every CloudEvent type Skylark sends or receives, in one place (pure).

| type | sender → receiver | data |
| --- | --- | --- |
| ``dev.knative.sources.redisstream`` | RedisStreamSource → handlers | flat JSON array of strings (a change entry) |
| ``dev.knative.sources.ping`` | PingSource → handlers (warm-up), or a workflow's first function | the PingSource's data |
| ``io.skylark.bundle.propagated`` | handlers@A → broker@B → handlers@B | a bundle, inline or as a claim check, or a delete's tombstone |

The events of a workflow (what its functions accept and emit) are the workflow's own: they are
declared in its file (``skylark.workflow``), not here; the example workflow's are in ``ex_*``.

Extensions follow the CloudEvents naming rule (lowercase a-z0-9, at most 20 characters).
"""

from __future__ import annotations

import re

# Inbound, from Knative sources (their exact strings, see knative-extensions/eventing-redis and
# knative/eventing's PingSource).
REDIS_STREAM = "dev.knative.sources.redisstream"
PING = "dev.knative.sources.ping"

# Ours.
BUNDLE_PROPAGATED = "io.skylark.bundle.propagated"

# Extension attributes.
EXT_CHAIN = "skylarkchain"
EXT_FUNCTION = "skylarkfunction"
EXT_VERSION = "skylarkversion"
EXT_NODE = "skylarknode"          # the node that produced the event (origin of the state)
EXT_CHECKSUM = "skylarkchecksum"
EXT_SIZE = "skylarksize"
EXT_TARGET = "skylarktarget"      # the node an event is meant for (one broker may serve many)
EXT_SIGNATURE = "skylarksignature"  # HMAC of a propagation event, when a signing key is set

EXTENSIONS = (EXT_CHAIN, EXT_FUNCTION, EXT_VERSION, EXT_NODE, EXT_CHECKSUM, EXT_SIZE, EXT_TARGET, EXT_SIGNATURE)

_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
assert all(_EXTENSION_NAME.fullmatch(name) for name in EXTENSIONS)


def source_for(node: str, service: str) -> str:
    """The ``source`` attribute of events our services emit."""
    return f"/skylark/nodes/{node}/{service}"
