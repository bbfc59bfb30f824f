"""The thread lifecycle the local sources share: ``start()`` runs ``run(stop_event)`` in a daemon
thread, ``stop()`` ends it and closes the publisher if the source created its own."""

from __future__ import annotations

import threading

from eventing.publisher import Publisher


class BackgroundSource:
    """Base of :class:`~eventing.source.StreamSource` and :class:`~eventing.ping.PingSource`."""

    def __init__(self, publisher: Publisher | None, thread_name: str, **publisher_options) -> None:
        self._own_publisher = publisher is None
        self.publisher = publisher or Publisher(**publisher_options)
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def run(self, stop_event: threading.Event) -> None:
        raise NotImplementedError

    def start(self):
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, args=(self._stop,), name=self._thread_name,
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._own_publisher:
            self.publisher.close()
