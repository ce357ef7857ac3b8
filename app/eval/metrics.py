"""Error counts per clip (jiwer) and corpus figures with bootstrap confidence intervals.

A corpus WER is total word errors over total reference words, not a mean of per-clip rates (a
one-word clip would weigh as much as a sentence). Its 95% interval comes from resampling the
clips with replacement (a percentile bootstrap, seeded so a result file can be reproduced):
honest for a cohort of 40 clips, where a normal approximation is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jiwer
import numpy as np

from app.eval.textnorm import digit_string

BOOTSTRAP_ROUNDS = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True, slots=True)
class ClipScore:
    """One clip's errors, references and hypotheses already normalised."""

    ref_words: int
    substitutions: int
    deletions: int
    insertions: int
    ref_chars: int
    char_errors: int
    entity_ok: bool | None
    """The hypothesis's digit string equals the reference's (None: the reference has none)."""

    @property
    def word_errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def score_clip(reference: str, hypothesis: str) -> ClipScore:
    """Errors of `hypothesis` against `reference` (both normalised; the reference not empty)."""
    if not reference.strip():
        raise ValueError("an empty reference cannot be scored")
    word = jiwer.process_words(reference, hypothesis)
    char = jiwer.process_characters(reference, hypothesis)
    expected = digit_string(reference)
    return ClipScore(
        ref_words=len(reference.split()),
        substitutions=word.substitutions,
        deletions=word.deletions,
        insertions=word.insertions,
        ref_chars=char.hits + char.substitutions + char.deletions,
        char_errors=char.substitutions + char.deletions + char.insertions,
        entity_ok=(digit_string(hypothesis) == expected) if expected else None,
    )


@dataclass(frozen=True, slots=True)
class Estimate:
    """A rate and its 95% bootstrap interval (None where there is nothing to measure)."""

    value: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict[str, float | None]:
        return {"value": _round(self.value), "low": _round(self.low), "high": _round(self.high)}


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures of a set of clips (a cohort, or all)."""

    clips: int
    ref_words: int
    wer: Estimate
    cer: Estimate
    entity_clips: int
    entity_accuracy: Estimate
    substitutions: int
    deletions: int
    insertions: int

    def as_dict(self) -> dict[str, object]:
        return {
            "clips": self.clips,
            "ref_words": self.ref_words,
            "wer": self.wer.as_dict(),
            "cer": self.cer.as_dict(),
            "entity_clips": self.entity_clips,
            "entity_accuracy": self.entity_accuracy.as_dict(),
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
        }


def summarise(scores: Sequence[ClipScore], *, seed: int = 0) -> Summary:
    """Corpus WER, CER and entity accuracy of `scores` with bootstrap intervals."""
    rng = np.random.default_rng(seed)
    n = len(scores)
    picks = rng.integers(0, n, size=(BOOTSTRAP_ROUNDS, n)) if n else None
    word_errors = np.array([s.word_errors for s in scores], dtype=np.float64)
    ref_words = np.array([s.ref_words for s in scores], dtype=np.float64)
    char_errors = np.array([s.char_errors for s in scores], dtype=np.float64)
    ref_chars = np.array([s.ref_chars for s in scores], dtype=np.float64)
    with_entity = [i for i, s in enumerate(scores) if s.entity_ok is not None]
    entity_ok = np.array([float(bool(scores[i].entity_ok)) for i in with_entity])
    entity_picks = (
        rng.integers(0, len(with_entity), size=(BOOTSTRAP_ROUNDS, len(with_entity)))
        if with_entity
        else None
    )
    return Summary(
        clips=n,
        ref_words=int(ref_words.sum()),
        wer=_ratio(word_errors, ref_words, picks),
        cer=_ratio(char_errors, ref_chars, picks),
        entity_clips=len(with_entity),
        entity_accuracy=_ratio(entity_ok, np.ones_like(entity_ok), entity_picks),
        substitutions=sum(s.substitutions for s in scores),
        deletions=sum(s.deletions for s in scores),
        insertions=sum(s.insertions for s in scores),
    )


def _ratio(numerator: np.ndarray, denominator: np.ndarray, picks: np.ndarray | None) -> Estimate:
    """sum(numerator) / sum(denominator), with the percentile interval over `picks`."""
    total = float(denominator.sum())
    if picks is None or total == 0:
        return Estimate(None, None, None)
    value = float(numerator.sum()) / total
    sampled_denominator = denominator[picks].sum(axis=1)
    sampled = numerator[picks].sum(axis=1) / np.where(sampled_denominator, sampled_denominator, 1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(sampled, [tail, 100 - tail])
    return Estimate(value, float(low), float(high))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation), None for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
