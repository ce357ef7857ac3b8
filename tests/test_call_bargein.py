"""The echo guard and the adaptive end of turn, frame by frame (no threads, no engines)."""

from __future__ import annotations

import math
import random
import struct

from app.asr.base import RecognitionOptions
from app.call.bargein import BargeInConfig, BargeInDetector, EchoReference
from app.call.hangover import Hangover, answer_state
from app.dialog.actions import Ask

FRAME = 160


class Voiced:
    """Classifier stand-in: every frame above a level is speech (the VAD is not under test)."""

    def is_speech(self, frame: bytes) -> bool:
        return any(abs(s) > 300 for s in struct.unpack(f"<{FRAME}h", frame))


def tone(level: float, seed: int) -> bytes:
    rng = random.Random(seed)
    phase = rng.random() * 6.28
    return struct.pack(
        f"<{FRAME}h", *(int(level * math.sin(phase + i * 0.4)) for i in range(FRAME))
    )


def speech_like(n: int, seed: int) -> list[bytes]:
    """Frames whose level wanders like syllables (so the envelope has a shape to follow)."""
    rng = random.Random(seed)
    return [tone(500 + 4000 * abs(math.sin(i / 3 + rng.random())), seed + i) for i in range(n)]


def scaled(frame: bytes, gain: float) -> bytes:
    return struct.pack(f"<{FRAME}h", *(int(s * gain) for s in struct.unpack(f"<{FRAME}h", frame)))


def run(echo_db: float | None, delay: int, caller: list[bytes] | None, start: int = 60):
    """Bot plays 150 frames; the line echoes them; the caller may speak from `start`."""
    reference = EchoReference()
    detector = BargeInDetector(BargeInConfig(), Voiced(), reference)
    bot = speech_like(150, seed=1)
    sent: list[bytes] = []
    for tick, out in enumerate(bot):
        reference.played(out)
        sent.append(out)
        incoming = [0] * FRAME
        if echo_db is not None and tick >= delay:
            echo = scaled(sent[tick - delay], 10 ** (echo_db / 20))
            incoming = list(struct.unpack(f"<{FRAME}h", echo))
        if caller is not None and start <= tick < start + len(caller):
            voice = struct.unpack(f"<{FRAME}h", caller[tick - start])
            incoming = [
                max(-32768, min(32767, a + b)) for a, b in zip(incoming, voice, strict=True)
            ]
        if detector.process(struct.pack(f"<{FRAME}h", *incoming), tick):
            return tick, detector
    return None, detector


def test_echo_alone_never_barges_in_and_its_delay_is_found() -> None:
    for delay in (3, 6, 12):
        barged, detector = run(echo_db=-10, delay=delay, caller=None)
        assert barged is None
        assert detector.lag_ms == delay * 20
        assert 0.25 < detector.erl < 0.45  # -10 dB is 0.32


def test_caller_over_the_echo_barges_in_within_five_frames() -> None:
    caller = speech_like(40, seed=7)
    barged, _ = run(echo_db=-10, delay=3, caller=caller, start=60)
    assert barged is not None and 60 <= barged <= 65


def test_caller_on_a_line_without_echo_barges_in_after_min_speech() -> None:
    caller = [scaled(f, 0.3) for f in speech_like(40, seed=9)]  # much quieter than the bot
    barged, detector = run(echo_db=None, delay=0, caller=caller, start=60)
    assert barged == 63  # 4 frames = 80 ms
    held = detector.held()
    assert held[-4:] == caller[:4]  # the onset is kept for the recogniser


def test_a_soft_start_does_not_raise_the_guard_against_a_quiet_caller() -> None:
    """Breath and a soft first syllable (below the VAD) come before the voice. On a line with
    no echo found they must not teach the guard that the echo is loud, or a quiet caller's
    speech that follows is discounted as echo and the prompt plays on."""
    soft = [tone(250, 20 + i) for i in range(8)]  # under the stand-in VAD's threshold
    voice = [scaled(f, 0.12) for f in speech_like(30, seed=11)]  # ~25 dB under the bot
    barged, detector = run(echo_db=None, delay=0, caller=soft + voice, start=60)
    assert detector.lag_ms is None  # nothing correlated: no echo path
    assert barged is not None and barged <= 60 + len(soft) + 4 + 2


def test_a_click_does_not_barge_in() -> None:
    barged, _ = run(echo_db=None, delay=0, caller=[tone(6000, 3)] * 2, start=60)
    assert barged is None


def ask(slot: str, low: int | None = None, high: int | None = None, phrases=()) -> Ask:
    return Ask(
        step="s",
        prompt="",
        options=RecognitionOptions(phrases=tuple(phrases)),
        slot=slot,
        min_length=low,
        max_length=high,
    )


def test_answer_state_by_slot() -> None:
    pin = ask("digits", 4, 4)
    assert answer_state(pin, "four one") == "incomplete"
    assert answer_state(pin, "four one seven two") == "complete"
    account = ask("digits", 4, 12)
    assert answer_state(account, "four one seven two") == "incomplete"  # may go on to 12
    assert answer_state(ask("digits", 4), "four one seven") == "incomplete"
    assert answer_state(ask("digits", 4), "four one seven two") == "open"  # no maximum
    assert answer_state(ask("number"), "two hundred and") == "incomplete"
    assert answer_state(ask("number"), "two hundred") == "incomplete"  # "... and five"?
    assert answer_state(ask("number"), "two hundred five") == "open"
    assert answer_state(ask("yes_no"), "yes") == "complete"
    assert answer_state(ask("choice", phrases=("billing", "sales")), "billing") == "complete"
    assert answer_state(ask("text"), "hello there") == "open"
    assert answer_state(pin, "") == "incomplete"  # no digit yet
    assert answer_state(ask("yes_no"), "") == "open"


def test_hangover_lengthens_incomplete_and_shortens_complete_answers() -> None:
    hangover = Hangover(incomplete_ms=1000, complete_ms=250)
    pin = ask("digits", 4, 4)
    assert hangover.end_silence_ms(pin, "four one", 400) == 1000
    assert hangover.end_silence_ms(pin, "four one seven two", 400) == 250
    assert hangover.end_silence_ms(ask("text"), "hello", 400) == 400
