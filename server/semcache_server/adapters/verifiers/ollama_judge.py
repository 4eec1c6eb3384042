"""An optional LLM judge through Ollama, for users with a model to spare.

The verified policy asks it only where the pair verifier is unsure. It answers one question,
"does the answer to the cached question fully answer the new one?", with yes or no. Anything
else (a timeout, an error, a reply that is neither) counts as no: a judge that cannot answer
must never turn a miss into a hit.
"""

from __future__ import annotations

import asyncio
import logging
import re

import httpx
import ollama

log = logging.getLogger(__name__)

_YES = re.compile(r"^\W*yes\b", re.IGNORECASE)
_NO = re.compile(r"^\W*no\b", re.IGNORECASE)

SYSTEM = (
    "You decide whether a cached answer can be reused. Reply with one word: yes or no. "
    "Reply yes only when any correct answer to question B is also a complete and correct "
    "answer to question A: same subject, same direction, same numbers, same constraints."
)


def judge_prompt(query: str, cached: str) -> str:
    """The user message the judge is sent (tests script the Ollama-protocol server's reply)."""
    return f"Question A: {query}\nQuestion B: {cached}\nCan the answer to B be reused for A?"


class OllamaJudge:
    def __init__(self, host: str, model: str, timeout: float) -> None:
        self.model = model
        self._timeout = timeout
        self._client = ollama.AsyncClient(host=host, timeout=httpx.Timeout(timeout))

    @property
    def model_id(self) -> str:
        return f"ollama/{self.model}"

    async def same_answer(self, query: str, cached: str) -> bool | None:
        """True or False as the judge says; None when it could not say in time."""
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.chat(
                    model=self.model,
                    messages=[
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": judge_prompt(query, cached)},
                    ],
                    options={"temperature": 0, "num_predict": 3},
                )
        except (TimeoutError, ollama.ResponseError, httpx.HTTPError, ConnectionError) as error:
            log.debug("judge %s failed: %s", self.model, error or type(error).__name__)
            return None
        reply = response.message.content or ""
        if _YES.match(reply):
            return True
        if _NO.match(reply):
            return False
        log.debug("judge %s replied neither yes nor no: %r", self.model, reply[:40])
        return None

    async def aclose(self) -> None:
        await self._client._client.aclose()
