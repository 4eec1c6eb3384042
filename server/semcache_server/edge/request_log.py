"""One log line per call of the semcache.v1 services and of the HTTP fronts, at INFO on the
`semcache_server.requests` logger: its request id, RPC (or HTTP path), status, tenant, where the
answer came from, similarities and stage timings. Prompts are never written unless the server
runs with --log-prompts."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from semcache_server.edge.metrics import resource_label
from semcache_server.logs import EVENT, FIELDS

if TYPE_CHECKING:
    from semcache_server.edge.calls import CallRecord

log = logging.getLogger("semcache_server.requests")

PROMPT_CHARS = 2000
"""The most of a prompt a line holds, with --log-prompts."""


def _milliseconds(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _similarity(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= PROMPT_CHARS:
        return text
    return text[: PROMPT_CHARS - 1] + "…"


def _text(value: object) -> str:
    """A value of the text form: bare when it is one word, JSON-quoted otherwise."""
    if isinstance(value, str):
        if value and all(c.isalnum() or c in "._:-/" for c in value):
            return value
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return ",".join(f"{key}:{item}" for key, item in value.items())
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class RequestLog:
    def __init__(self, log_prompts: bool = False) -> None:
        self._log_prompts = log_prompts

    def fields(self, record: CallRecord) -> dict[str, object]:
        """The line's fields: the first nine are in every line (null when unknown); the rest
        only when they say something (not null, false, zero or empty)."""
        fields: dict[str, object] = {
            "request_id": record.request_id,
            "rpc": record.rpc,
            "status": record.status,
            "tenant": record.tenant,
            "source": record.source,
            "similarity": _similarity(record.similarity),
            "nearest_similarity": _similarity(record.nearest_similarity),
            "duration_ms": _milliseconds(record.seconds),
            "stages_ms": {
                stage.value: _milliseconds(seconds) for stage, seconds in record.stages.items()
            },
        }
        optional: dict[str, object] = {
            "semantic_status": record.semantic_status,
            "decided_by": record.decided_by,
            "verifier_score": _similarity(record.verifier_score),
            "guard_findings": record.guard_findings,
            "stored": record.stored,
            "shared_llm_call": record.shared_llm_call,
            "passthrough": record.passthrough_reason,
            "tokens_saved": record.saved_tokens,
            "completion_tokens": record.completion_tokens,
            "llm_outcome": record.llm_outcome.value if record.llm_outcome else None,
            "shed": [resource_label(what) for what in record.shed_resources],
            "error": record.error,
        }
        if self._log_prompts:
            optional["prompt"] = _clip(record.prompt)
            optional["matched_prompt"] = _clip(record.matched_prompt)
        fields.update((name, value) for name, value in optional.items() if value)
        return fields

    def write(self, record: CallRecord) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        fields = self.fields(record)
        text = " ".join(
            f"{name}={_text(value)}"
            for name, value in fields.items()
            if value is not None and name not in ("rpc", "status")
        )
        log.info(
            "%s %s %s",
            record.rpc,
            record.status,
            text,
            extra={FIELDS: fields, EVENT: "request"},
        )
