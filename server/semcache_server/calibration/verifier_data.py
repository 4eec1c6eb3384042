"""Training pairs for the pair verifier: labelled pairs and generated look-alikes, with the
held-out parts of the shared files kept out.

What the cache meets in the gray zone is mostly of two kinds: a true paraphrase, and a prompt that
looks the same but asks another thing (a changed number, a negation, an opposite word, swapped
roles, another name). Quora's labelled pairs teach some of the first; the second is rare in any
labelled file, so it is generated here from real questions (and by `frames` and
`minimal_pairs`, with their label known by construction). Unlabelled neighbours are never taken
for negatives: many of them are paraphrases nobody linked.

No torch here: the pairs are plain data, built the same way for training and for tests.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

from semcache_server.calibration.data import LabelledPair

WORDS = resources.files("semcache_server.core") / "policies" / "words"


@dataclass(frozen=True)
class TrainingPair:
    query: str
    cached: str
    label: float
    """1.0: the cached prompt's answer answers the query."""
    origin: str
    """Where the pair comes from (labelled file, mined, or the generator that made it)."""


def _lines(name: str) -> list[list[str]]:
    return [
        line.split()
        for line in (WORDS / name).read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


_AUXILIARIES = ("is", "are", "was", "were", "do", "does", "did", "can", "should", "could", "would")
_NEGATE: tuple[tuple[re.Pattern[str], str], ...] = (
    # remove first: "isn't" -> "is", "is not" -> "is", "can't" -> "can"
    (re.compile(r"\b(" + "|".join(_AUXILIARIES) + r")(?:n't| not)\b", re.IGNORECASE), r"\1"),
    (re.compile(r"\bcan't\b", re.IGNORECASE), "can"),
    (re.compile(r"\bwithout\b"), "with"),
    # then add: "is" -> "isn't", "does" -> "doesn't"
    (re.compile(r"\b(is|are|was|were|does|did|should|could|would)\b"), r"\1n't"),
    (re.compile(r"\bdo\b"), "don't"),
    (re.compile(r"\bcan\b"), "can't"),
    (re.compile(r"\bwith\b"), "without"),
)
_MID_SENTENCE_NAME = re.compile(r"(?<=\w )[A-Z][a-z]{3,}\b")
_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+(?:\.\d+)?")


class LookAlikes:
    """Generates prompts one change away from a real one, each asking another thing."""

    def __init__(self, seed: int = 0) -> None:
        self._random = random.Random(seed)
        self._opposite: dict[str, list[str]] = {}
        for pair in _lines("opposites.txt"):
            a, b = pair[0], pair[-1]
            self._opposite.setdefault(a, []).append(b)
            self._opposite.setdefault(b, []).append(a)

    def number(self, text: str) -> str | None:
        numbers = [m for m in _WORD.finditer(text) if m.group()[0].isdigit()]
        if not numbers:
            return None
        match = self._random.choice(numbers)
        value = float(match.group())
        changed = value + self._random.choice([-2, -1, 1, 2, 10]) if value > 2 else value + 1
        new = str(int(changed)) if float(changed).is_integer() else f"{changed:g}"
        return text[: match.start()] + new + text[match.end() :]

    def negation(self, text: str) -> str | None:
        """Add or remove a negation on an auxiliary verb ("can" / "can't", "does" / "doesn't")."""
        for pattern, replacement in _NEGATE:
            changed = pattern.sub(replacement, text, count=1)
            if changed != text:
                return changed
        return None

    def opposite(self, text: str) -> str | None:
        words = [m for m in _WORD.finditer(text) if m.group().lower() in self._opposite]
        if not words:
            return None
        match = self._random.choice(words)
        word = match.group()
        other = self._random.choice(self._opposite[word.lower()])
        if word[0].isupper():
            other = other.capitalize()
        return text[: match.start()] + other + text[match.end() :]

    def swapped_roles(self, text: str) -> str | None:
        """ "X to Y" -> "Y to X", and likewise around other asymmetric links."""
        pattern = re.compile(
            r"\b([A-Za-z][\w+#.-]*) (to|into|than|from|over|vs\.? better than|before|after|"
            r"for|of) ([A-Za-z][\w+#.-]*)\b"
        )
        matches = [m for m in pattern.finditer(text) if m.group(1).lower() != m.group(3).lower()]
        matches = [m for m in matches if len(m.group(1)) > 2 and len(m.group(3)) > 2]
        if not matches:
            return None
        match = self._random.choice(matches)
        a, link, b = match.groups()
        if a.lower() in _FUNCTION_WORDS or b.lower() in _FUNCTION_WORDS:
            return None
        return text[: match.start()] + f"{b} {link} {a}" + text[match.end() :]

    def entity(self, text: str, names: Sequence[str]) -> str | None:
        """Replace one capitalised name (not the first word) with another name."""
        spans = [
            m
            for m in re.finditer(r"\b[A-Z][a-z]{2,}\b", text)
            if m.start() > 0
            and m.group()
            not in ("I", "What", "How", "Why", "Who", "Which", "When", "Where", "Is", "Can")
        ]
        if not spans or not names:
            return None
        match = self._random.choice(spans)
        other = self._random.choice(names)
        if other == match.group():
            return None
        return text[: match.start()] + other + text[match.end() :]

    def make(self, texts: Sequence[str], per_kind: int) -> list[TrainingPair]:
        """Up to per_kind pairs of each kind, from texts in a shuffled order."""
        names = sorted(
            {m.group() for t in texts for m in re.finditer(r"(?<=\w )[A-Z][a-z]{3,}\b", t)}
        )
        made: list[TrainingPair] = []

        def entity(text: str) -> str | None:
            return self.entity(text, names)

        kinds: dict[str, Callable[[str], str | None]] = {
            "number": self.number,
            "negation": self.negation,
            "opposite": self.opposite,
            "swapped_roles": self.swapped_roles,
            "entity": entity,
        }
        for kind, change in kinds.items():
            order = list(texts)
            self._random.shuffle(order)
            count = 0
            for text in order:
                changed = change(text)
                if changed is None or changed.lower() == text.lower():
                    continue
                query, cached = (changed, text) if self._random.random() < 0.5 else (text, changed)
                made.append(TrainingPair(query, cached, 0.0, f"generated:{kind}"))
                count += 1
                if count >= per_kind:
                    break
        return made


_FUNCTION_WORDS = frozenset(
    word for (word,) in (line[:1] for line in _lines("stopwords.txt")) if word
) | {"not", "no"}


_REWRITES: tuple[tuple[str, str], ...] = (
    (r"^What is ", "What's "),
    (r"^What's ", "What is "),
    (r"^How do I ", "How can I "),
    (r"^How can I ", "How do I "),
    (r"^How do you ", "How does one "),
    (r"^Why is ", "For what reason is "),
    (r"^Which ", "What "),
    (r"^Is it possible to ", "Can I "),
    (r"^Can I ", "Is it possible to "),
    (r"\?$", ""),
)
_PREFIXES = ("Please tell me: ", "Can you tell me ", "I'd like to know: ", "Quick question: ")


def labelled(pairs: Iterable[LabelledPair], origin: str) -> list[TrainingPair]:
    return [TrainingPair(p.query, p.cached, float(p.duplicate), origin) for p in pairs]
