"""The event catalogue: every CloudEvent type Skylark sends or receives, in one place (pure).

| type | sender → receiver | data |
| --- | --- | --- |
| ``dev.knative.sources.redisstream`` | RedisStreamSource → handlers | flat JSON array of strings (a change entry) |
| ``dev.knative.sources.ping`` | PingSource → handlers (warm-up) / ex_preprocess (input image) | the PingSource's data |
| ``io.skylark.bundle.propagated`` | handlers@A → broker@B → handlers@B | a bundle, inline or as a claim check, or a delete's tombstone |
| ``io.skylark.image.submitted`` | a client → broker → ex_preprocess | an image (base64) or a state reference |
| ``io.skylark.preprocess.completed`` | ex_preprocess → broker → ex_detect | chain, node, stored fields, timings |
| ``io.skylark.detect.completed`` | ex_detect → broker → ex_alarm | chain, node, detections summary, timings |
| ``io.skylark.alarm.raised`` | ex_alarm → broker (observers) | chain, node, detections, rule, timings |

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
IMAGE_SUBMITTED = "io.skylark.image.submitted"
PREPROCESS_COMPLETED = "io.skylark.preprocess.completed"
DETECT_COMPLETED = "io.skylark.detect.completed"
ALARM_RAISED = "io.skylark.alarm.raised"

SKYLARK_TYPES = (BUNDLE_PROPAGATED, IMAGE_SUBMITTED, PREPROCESS_COMPLETED, DETECT_COMPLETED, ALARM_RAISED)

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
