"""Split a prompt into pieces that can be synthesised one after another.

Synthesising sentence by sentence lets the first audio go out while the rest is still being
rendered: a long LLM reply starts playing after its first sentence, not after all of it. A
sentence longer than `max_chars` is split further at clause marks (, ; :) so the first piece
stays short; pieces are never cut inside a number ("3.5", "1,000") or after a common
abbreviation ("Dr.", "e.g."), which would make the voice pause in the wrong place.
"""

from __future__ import annotations

import re

# Not "no": "Please say yes or no." ends a sentence far more often than "No. 5" occurs.
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "approx", "dept", "inc"}
    | {"ltd", "jr", "sr", "mt", "ft"}
)
_SENTENCE_END = re.compile(r"([.!?]+)[\"')\]]*\s+")
_CLAUSE_END = re.compile(r"([,;:])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, each with its closing punctuation; blank text gives []."""
    text = " ".join(text.split())
    pieces: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        before = text[start : match.start()]
        last_word = before.rsplit(" ", 1)[-1].lower().rstrip(".")
        if match.group(1) == "." and (last_word in _ABBREVIATIONS or len(last_word) == 1):
            continue  # "Dr. Smith", "J. Smith": not a sentence end
        pieces.append(text[start:end].strip())
        start = end
    if start < len(text):
        pieces.append(text[start:].strip())
    return [piece for piece in pieces if piece]


def split_for_speech(text: str, max_chars: int = 120, first_max_chars: int = 60) -> list[str]:
    """Pieces to synthesise in order: sentences, long ones split at clause marks.

    The first piece is held to `first_max_chars` where a clause mark allows, because its
    synthesis time is what the caller waits for.
    """
    pieces: list[str] = []
    for sentence in split_sentences(text):
        limit = first_max_chars if not pieces else max_chars
        pieces.extend(_split_clauses(sentence, limit))
    return pieces


def _split_clauses(sentence: str, limit: int) -> list[str]:
    if len(sentence) <= limit:
        return [sentence]
    pieces: list[str] = []
    start = 0
    for match in _CLAUSE_END.finditer(sentence):
        if match.group(1) == "," and _inside_number(sentence, match.start()):
            continue
        if match.end() - start >= min(limit, 24):  # no two-word fragments
            pieces.append(sentence[start : match.end()].strip())
            start = match.end()
            limit = max(limit, 120)
    if start < len(sentence):
        pieces.append(sentence[start:].strip())
    return pieces


def _inside_number(text: str, comma: int) -> bool:
    return (
        comma > 0
        and text[comma - 1].isdigit()
        and comma + 1 < len(text)
        and text[comma + 1].isdigit()
    )
