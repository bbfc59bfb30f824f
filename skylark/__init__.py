"""Skylark: bundled, versioned function state in the node's Redis, propagated to neighbours.

The public API of the core library:

- :class:`skylark.state.settings.Settings`: configuration from the environment.
- :class:`skylark.state.store.StateStore`: single and bundled state on one node's Redis.
- :class:`skylark.state.reader.BundleReader`: read a bundle locally, else from its origin node.
- :mod:`skylark.state.bundle`: the pure bundle model (metadata, checksums, sizes).
- :mod:`skylark.state.errors`: the exceptions every part raises.
"""

__version__ = "0.1.0"
