"""CloudEvent handlers: rebuild bundles from stream changes, propagate them, receive them, warm up."""
