"""LocalAgreement: which words of a re-decoded, growing utterance are safe to show as settled.

A streaming recogniser built on an offline model (Whisper) decodes the utterance's audio again
and again as it grows. Each decode is a complete hypothesis, and its last words change from one
decode to the next while the speaker is mid-word. LocalAgreement-n (Macháček et al., 2023,
"Turning Whisper into Real-Time Transcription System", as in ufal/whisper_streaming) commits the
longest common prefix of the last n hypotheses: words that n decodes in a row agreed on. What is
committed is never taken back; the rest of the latest hypothesis is the tentative tail.

Pure and model-free: it takes word lists. Words are compared case- and punctuation-insensitively
("Four," agrees with "four"), and shown in the form of the latest hypothesis that had them.

Every hypothesis here covers the utterance from its start (the engine decodes the whole buffer,
a turn being short), so it normally repeats the committed words first. When a later decode
revises a committed word ("four" -> "for") or drops or adds one, the committed words are aligned
to the hypothesis (difflib) and only what follows them counts as new; an unmatched committed
word at the end is taken to have been re-spelled one for one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from difflib import SequenceMatcher


def word_key(word: str) -> str:
    """How words are compared: case-folded letters, digits and apostrophes only.

    "Four," -> "four", "1,234" -> "1234", "don't" -> "don't"; "-" and "..." -> "" (not a word).
    """
    return "".join(ch for ch in word.casefold() if ch.isalnum() or ch == "'")


class LocalAgreement:
    """LocalAgreement-n over successive whole-utterance hypotheses (n = 2 by default).

    `insert` each new decode's words; it returns the words it newly commits. `committed` grows
    only; `tentative` is the latest hypothesis's tail after them; `text` is both, the partial
    result to show. Not thread-safe: one stream owns one.
    """

    def __init__(self, n: int = 2) -> None:
        if n < 2:
            raise ValueError(f"LocalAgreement needs n >= 2 hypotheses to agree, got {n}")
        self.n = n
        self._committed: list[str] = []
        self._committed_keys: list[str] = []
        # The tails (words after the committed ones) of the last n-1 hypotheses, oldest first.
        self._tails: deque[list[str]] = deque(maxlen=n - 1)
        self._tentative: list[str] = []

    @property
    def committed(self) -> tuple[str, ...]:
        return tuple(self._committed)

    @property
    def tentative(self) -> tuple[str, ...]:
        return tuple(self._tentative)

    @property
    def words(self) -> tuple[str, ...]:
        """Committed words then the tentative tail."""
        return (*self._committed, *self._tentative)

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def reset(self) -> None:
        """Forget everything, for a new utterance."""
        self._committed.clear()
        self._committed_keys.clear()
        self._tails.clear()
        self._tentative = []

    def insert(self, hypothesis: Sequence[str]) -> list[str]:
        """Take the next decode of the whole utterance; return the words it commits."""
        words = [word for word in hypothesis if word_key(word)]
        keys = [word_key(word) for word in words]
        start = _after(self._committed_keys, keys)
        tail, tail_keys = words[start:], keys[start:]
        agreed = len(tail) if len(self._tails) == self._tails.maxlen else 0
        for previous in self._tails:
            agreed = min(agreed, _common_prefix([word_key(w) for w in previous], tail_keys))
        commit = tail[:agreed]
        self._committed += commit
        self._committed_keys += tail_keys[:agreed]
        # Every remembered tail starts with the agreed words: drop them there too.
        for i, previous in enumerate(self._tails):
            self._tails[i] = previous[agreed:]
        self._tentative = tail[agreed:]
        self._tails.append(self._tentative)
        return commit


def _common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _after(committed: list[str], keys: list[str]) -> int:
    """Index in `keys` (a hypothesis) just after the words that correspond to `committed`."""
    c = len(committed)
    if keys[:c] == committed:  # the usual case: the decode repeats what was settled
        return c
    matcher = SequenceMatcher(None, committed, keys, autojunk=False)
    end_committed = end_hypothesis = 0
    for a, b, size in matcher.get_matching_blocks():
        if size:
            end_committed, end_hypothesis = a + size, b + size
    if not end_hypothesis:
        # Nothing in common: assume the same number of words, re-spelled.
        return min(c, len(keys))
    # Committed words after the last match were re-spelled: skip as many hypothesis words.
    return min(len(keys), end_hypothesis + (c - end_committed))
