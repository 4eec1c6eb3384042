"""Deterministic ids for cache entries and semantic partitions.

An entry id is derived from everything that changes the answer, so the exact layer is one lookup by
id and two replicas storing the same answer write the same entry. A partition id groups the entries
that a semantic match may reuse: same model, system prompt, options, history, namespace
and embedding model. The prompt is not part of it (the semantic layer compares prompts), except
for what the embedding model could not read of it.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

from semcache_server.core.domain import Query, Turn

KEY_VERSION = 1
_WHITESPACE = re.compile(r"\s+")


def normalise_prompt(prompt: str) -> str:
    """Unicode NFKC and folded whitespace; case is kept, because it can change the answer."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", prompt)).strip()


def _digest(payload: dict[str, object]) -> str:
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def _history(history: tuple[Turn, ...]) -> list[list[str]]:
    return [[turn.role.value, normalise_prompt(turn.content)] for turn in history]


def _context(query: Query) -> dict[str, object]:
    """What, besides the prompt, decides the answer."""
    return {
        "v": KEY_VERSION,
        "namespace": query.namespace,
        "model": query.model,
        "system": normalise_prompt(query.system),
        "options": query.options.as_dict(),
        "history": _history(query.history),
    }


def entry_id(query: Query) -> str:
    return _digest({**_context(query), "prompt": normalise_prompt(query.prompt)})


def partition_id(query: Query, embedding_model: str, unread: str = "") -> str:
    """unread: what the embedding model could not read of the prompt (past its window, unknown
    tokens). Its vector says nothing of those parts, so they must match exactly: they join the
    partition. Most prompts have none, and keep the partition they always had."""
    context: dict[str, object] = {**_context(query), "embedding_model": embedding_model}
    if unread:
        context["unread"] = normalise_prompt(unread)
    return _digest(context)
