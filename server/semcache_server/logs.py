"""How the server's log lines look: plain text for people, or one JSON object a line for log
collectors (`--log-format json`). A record may carry structured fields (the request log's); the
JSON form puts them at the top level, the text form shows the message, which repeats them."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIELDS = "semcache_fields"
"""The `extra` key of a record's structured fields (a dict of JSON values)."""
EVENT = "semcache_event"
"""The `extra` key that names what a record with fields is ("request")."""


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC), level, logger, and either the message or the event
    with its fields; a traceback goes into "exception"."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
        }
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


def configure(level: str, log_format: str) -> None:
    """Log to stderr at level, as text or as JSON lines."""
    handler = logging.StreamHandler()
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler])
