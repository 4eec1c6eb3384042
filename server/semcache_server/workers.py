"""`semcache serve --workers N`: N server processes on one port, so a host's cores all serve.

One process serves from one event loop, and Python runs that loop on one core at a time: on these
2-core machines a process used 107% of a core at 32 callers while the machine had room. The kernel
spreads connections over processes that listen on the same port (SO_REUSEPORT): measured here,
exact hits at 32 callers went from 1,968-2,488/s with one process to 2,753-2,851/s with two.

Only the workers share the port. They listen with SO_REUSEPORT (`--share-port`); a plain
`semcache serve` listens without it, so Linux refuses it beside them, and refuses them beside it.
This launcher refuses a port something already listens on before it starts any worker, so a
second group is refused too. What remains: Linux lets any process of the same user that sets
SO_REUSEPORT join (another user's never), so a second group started in the seconds before the
first group's workers listen, or a `--share-port` serve, can still split the connections.

Each worker is a whole replica, as if it ran on its own host: its own index, hot entries, embedder
(memory times N) and state dir (`<state-dir>/worker-<i>`), kept in step with the others through
the change feed. This process only launches them: it starts the embedded Redis when no
--redis-url is given (and restarts it if it dies), passes every other setting on, forwards
SIGTERM and SIGINT, and stops them all when one of them dies (an orchestrator restarts the lot).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import signal
import socket
import sys

from semcache_server.adapters.embedded_redis import EmbeddedRedis
from semcache_server.app import check_port, transport
from semcache_server.settings import Settings, option_of

log = logging.getLogger(__name__)

STOP_MARGIN = 5.0
"""Seconds past the grace period a worker gets to exit before it is killed."""


def worker_argv(settings: Settings, index: int, redis_url: str, port: int) -> list[str]:
    """The `semcache serve` command line of worker index: every setting as given, with the
    shared Redis and port, a state dir and a metrics port of its own, one worker, and its index
    (named in its log lines)."""
    values = dataclasses.asdict(settings) | {
        "workers": 1,
        "share_port": True,
        "redis_url": redis_url,
        "port": port,
        "state_dir": settings.state_dir / f"worker-{index}",
        "metrics_port": settings.metrics_port + index if settings.metrics_port else 0,
    }
    argv = [sys.executable, "-m", "semcache_server.cli", "serve", "--worker-index", str(index)]
    for name, value in values.items():
        flag = option_of(name).flag
        if value is None:
            continue
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(value, enum.Enum):
            argv += [flag, str(value.value)]
        else:
            argv += [flag, str(value)]
    return argv


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host.strip("[]"), 0))
        return int(probe.getsockname()[1])


async def run_workers(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT (0) or until a worker dies by itself (1); StartupRefused when
    something listens on the port already."""
    check_port(settings)
    loop = asyncio.get_running_loop()
    embedded: EmbeddedRedis | None = None
    supervisor: asyncio.Task[None] | None = None
    redis_url = settings.redis_url
    if redis_url is None:
        embedded = EmbeddedRedis(settings.state_dir)
        redis_url = await loop.run_in_executor(None, embedded.start)
        supervisor = asyncio.create_task(embedded.supervise(), name="semcache-embedded-redis")
    port = settings.port or free_port(settings.host)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    workers = [
        await asyncio.create_subprocess_exec(*worker_argv(settings, index, redis_url, port))
        for index in range(settings.workers)
    ]
    log.info(
        "%d workers (pids %s) serving on %s:%d over %s; their lines say worker-0 to worker-%d",
        len(workers),
        ", ".join(str(worker.pid) for worker in workers),
        settings.host,
        port,
        transport(settings),
        len(workers) - 1,
    )
    exits = [asyncio.ensure_future(worker.wait()) for worker in workers]
    stop = asyncio.ensure_future(stopping.wait())
    done, _ = await asyncio.wait([stop, *exits], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if stop not in done:
        index, died = next(
            (index, worker)
            for index, (worker, ended) in enumerate(zip(workers, exits, strict=True))
            if ended in done
        )
        log.error(
            "worker-%d (pid %d) exited with %s: stopping the others",
            index,
            died.pid,
            died.returncode,
        )
        code = 1
    stop.cancel()
    for worker in workers:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
    _, late = await asyncio.wait(exits, timeout=settings.grace_seconds + STOP_MARGIN)
    for index, (worker, ended) in enumerate(zip(workers, exits, strict=True)):
        if ended in late and worker.returncode is None:
            log.warning("worker-%d (pid %d) did not stop; killing it", index, worker.pid)
            worker.kill()
    await asyncio.gather(*exits, return_exceptions=True)
    if supervisor is not None:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
    if embedded is not None:
        await loop.run_in_executor(None, embedded.stop)
    return code
