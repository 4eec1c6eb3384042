"""Outages of optional dependencies, logged when they start and when they end."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class OutageLog:
    """Logs the first failure of a dependency and its recovery, not every failed request."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._down = False
        self.failures = 0
        """Failed calls since start-up."""

    def failed(self, error: Exception) -> None:
        self.failures += 1
        if not self._down:
            log.warning("%s unavailable, serving without it: %s", self._name, error)
        self._down = True

    def succeeded(self) -> None:
        if self._down:
            log.warning("%s is back", self._name)
        self._down = False


class ThrottledLog:
    """Logs each kind of failure at most once every `interval` seconds, saying how many went
    unlogged meanwhile: a fault that fails every request (Ollama dropping streams, a client
    sending garbage) must not fill the disk, and the first of each kind is always seen."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        logged_at, unlogged = self._last.get(kind, (float("-inf"), 0))
        if now - logged_at < self._interval:
            self._last[kind] = (logged_at, unlogged + 1)
            return
        if unlogged:
            message += " (%d more like it since the last line)"
            args = (*args, unlogged)
        self._logger.warning(message, *args)
        self._last[kind] = (now, 0)
