"""Local stand-in for a Knative Broker: ingress, Trigger filters, delivery with retries, dead letters, replies."""

from eventing.broker.local import LocalBroker

__all__ = ["LocalBroker"]
