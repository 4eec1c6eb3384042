"""A failure that fails every request is logged once per interval, with a count of the rest."""

from __future__ import annotations

import logging
import time

import pytest
from semcache_server.core.outages import ThrottledLog


def test_each_kind_is_logged_once_an_interval_with_the_count_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.throttled")
    throttled = ThrottledLog(logger, interval=0.2)
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        for _ in range(5):
            throttled.warning("broken", "stream broke at %s", "ollama")
        throttled.warning("unreachable", "cannot reach %s", "ollama")
        time.sleep(0.25)
        throttled.warning("broken", "stream broke at %s", "ollama")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "stream broke at ollama",
        "cannot reach ollama",
        "stream broke at ollama (4 more like it since the last line)",
    ]
