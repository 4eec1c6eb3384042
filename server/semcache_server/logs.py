"""How the server's log lines look: plain text for people, or one JSON object a line for log
collectors (`--log-format json`). A record may carry structured fields (the request log's); the
JSON form puts them at the top level, the text form shows the message, which repeats them.

A worker of `--workers N` names itself in each line (`worker-1`, its state dir's name). Lines that
native libraries write to stderr themselves (gRPC core's, as `I1208 01:59:31.404788 8744
ssl_transport_security.cc:2563] Handshake failed ...`) become log lines in the same format
(`native_lines_logged`), and gRPC core keeps its INFO lines to itself unless GRPC_VERBOSITY asks
for them (`quiet_grpc_core`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s"
FIELDS = "semcache_fields"
"""The `extra` key of a record's structured fields (a dict of JSON values)."""
EVENT = "semcache_event"
"""The `extra` key that names what a record with fields is ("request")."""


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC), level, logger, and either the message or the event
    with its fields; a traceback goes into "exception"."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
        }
        if self._worker is not None:
            line["worker"] = self._worker
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            line["event"] = getattr(record, EVENT, "")
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, log_format: str, worker: int | None = None) -> None:
    """Log to stderr at level, as text or as JSON lines; worker: the index of a worker of
    --workers, named in each line."""
    handler = logging.StreamHandler()
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter(worker)
    elif worker is not None:
        formatter = logging.Formatter(WORKER_TEXT_FORMAT.format(index=worker))
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler])


GRPC_VERBOSITY = "ERROR"
"""gRPC core's log level unless GRPC_VERBOSITY is set: its INFO lines include a failed TLS
handshake for every plaintext caller of a TLS port, which the caller hears about (`semcache`
names the TLS options to pass); GRPC_VERBOSITY=INFO brings them back, as log lines."""


def quiet_grpc_core() -> None:
    """Set GRPC_VERBOSITY for this process and its children unless it is set; gRPC reads it
    once, at import, so this must come first (in a process that imported grpc, it does nothing
    and changes nothing)."""
    if "grpc" not in sys.modules:
        os.environ.setdefault("GRPC_VERBOSITY", GRPC_VERBOSITY)


NATIVE_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^\]\s]+\] ?(.*)$")
"""gRPC core's (abseil's) line: severity, date, time, thread, file:line, message."""
NATIVE_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
NATIVE_JOIN_SECONDS = 2.0
"""How long the end of `native_lines_logged` waits for the lines still in the pipe."""


@contextlib.contextmanager
def native_lines_logged() -> Iterator[None]:
    """Within: what is written to file descriptor 2 by anything but Python (gRPC core, the
    children that inherit it) goes through a pipe and comes out as log lines, gRPC core's as
    the logger "grpc.core" at their own level, any other line as "native" at WARNING; Python's
    sys.stderr writes where fd 2 wrote before. Call `configure` inside, so the log handler
    writes there too and never into the pipe. Does nothing when sys.stderr is not fd 2 (a test
    runner capturing it)."""
    try:
        replaced = sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        replaced = False
    if not replaced:
        yield
        return
    original = sys.stderr
    original.flush()
    # Kept open to the end of the process: the log handler made inside writes to it, after too.
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = open(  # noqa: SIM115 -- lives as long as the process
        saved,
        "w",
        buffering=1,
        encoding=original.encoding,
        errors="backslashreplace",
        closefd=False,
    )
    relay = threading.Thread(target=_log_native_lines, args=(read_end,), daemon=True)
    relay.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = original
        os.dup2(saved, 2)  # closes the pipe's write end: the relay reads to its end and stops
        relay.join(timeout=NATIVE_JOIN_SECONDS)


def _log_native_lines(read_end: int) -> None:
    with open(read_end, "rb") as pipe:
        for raw in pipe:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            found = NATIVE_LINE.match(line)
            if found is not None:
                logging.getLogger("grpc.core").log(NATIVE_LEVELS[found[1]], "%s", found[2])
            else:
                logging.getLogger("native").warning("%s", line)
