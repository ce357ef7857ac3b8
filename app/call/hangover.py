"""Adaptive end of turn: how much silence ends the caller's answer, given what we heard so far.

One fixed silence is wrong both ways. People read account numbers in groups ("four five
seven one ... two two nine"), pausing half a second or more between them: a short silence cuts
them off mid-number. People who said "yes" are done: a long silence only makes the bot slow.
So while the streaming recogniser's partial result is an incomplete answer (fewer digits than
the question's maximum, or than its minimum when it has none; a number ending in "hundred" or
"and") the turn waits `incomplete_ms`; once it is a complete one (the maximum number of digits,
a yes or no, one of a menu's options) it ends after `complete_ms`; otherwise the question's
usual end silence applies. A fixed-length code (min = max) so ends fast, an account number of
4 to 12 digits waits for the caller's next group. A digits answer starts incomplete: until the
recogniser has a first digit, the caller has not given one. Later, an empty partial says
nothing (recognisers revise their first guesses to nothing): it changes nothing.

`complete_ms` is real silence (the endpointer ends speech at the voice, not at the VAD's own
hangover), and a recogniser that inserts a digit makes a 4-digit answer look complete one group
early: 300 ms outlasts most pauses inside a code read at a normal pace.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.asr.numbers import spoken_digits
from app.dialog import slots
from app.dialog.actions import Ask

_CONTINUES = frozenset({"and", "hundred", "thousand", "million", "point", "minus", "oh"})


@dataclass(frozen=True, slots=True)
class Hangover:
    """Silences (ms) for incomplete and complete answers; see the module docstring."""

    incomplete_ms: int = 1000
    complete_ms: int = 300

    def __post_init__(self) -> None:
        if not 0 < self.complete_ms <= self.incomplete_ms:
            raise ValueError(
                "need 0 < complete_ms <= incomplete_ms, got "
                f"{self.complete_ms} and {self.incomplete_ms}"
            )

    def end_silence_ms(self, ask: Ask, partial: str, usual_ms: int) -> int:
        """The silence that should end the turn now, after hearing `partial` so far."""
        state = answer_state(ask, partial)
        if state == "incomplete":
            return max(usual_ms, self.incomplete_ms)
        if state == "complete":
            return min(usual_ms, self.complete_ms)
        return usual_ms


def answer_state(ask: Ask, partial: str) -> str:
    """ "incomplete", "complete" or "open" (nothing to say either way) for `partial`."""
    words = partial.lower().split()
    if ask.slot == "digits":
        count = len(spoken_digits(partial))
        if ask.max_length is not None:
            # below the maximum a caller may well go on: account numbers are read in groups,
            # and a recogniser that inserted a digit must not end the turn before the last one
            return "complete" if count >= ask.max_length else "incomplete"
        return "incomplete" if count < (ask.min_length or 1) else "open"
    if not words:
        return "open"
    if ask.slot == "number":
        return "incomplete" if words[-1] in _CONTINUES else "open"
    if ask.slot == "yes_no":
        return "complete" if slots.yes_no(partial) is not None else "open"
    phrases = {p.lower() for p in (*ask.options.phrases, *ask.options.extra_phrases)}
    if ask.slot == "choice" and " ".join(words) in phrases:
        return "complete"
    return "open"
