"""Outages of optional dependencies, logged when they start and when they end."""

from __future__ import annotations

import logging

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
