"""Events: the CloudEvent catalogue and codecs, the broker publisher, and local stand-ins for the Knative parts."""
