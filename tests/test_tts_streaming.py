"""Prompt splitting for streamed synthesis, the shared prompt cache, and the call's Speaker."""

from __future__ import annotations

import threading
import time

import pytest

from app.call.speaking import Speaker
from app.media.playout import PlayoutBuffer
from app.tts.cache import PromptCache, PromptKey
from app.tts.espeak import EspeakEngine
from app.tts.sentences import split_for_speech, split_sentences


def test_sentences_keep_abbreviations_numbers_and_yes_no_endings() -> None:
    text = "Welcome to Acme. Dr. Smith has 3.5 minutes! Please say yes or no. Thanks"
    assert split_sentences(text) == [
        "Welcome to Acme.",
        "Dr. Smith has 3.5 minutes!",
        "Please say yes or no.",
        "Thanks",
    ]
    assert split_sentences("   ") == []


def test_long_first_sentence_is_split_at_a_clause_but_not_inside_a_number() -> None:
    text = (
        "Your balance is 1,250 dollars and 40 cents, and your last payment of 300 dollars "
        "was received on the third of March; thank you for banking with us."
    )
    pieces = split_for_speech(text, first_max_chars=60)
    assert pieces[0] == "Your balance is 1,250 dollars and 40 cents,"
    assert " ".join(pieces) == text
    assert all(len(p) <= 120 for p in pieces)


def test_cache_round_trips_g711_and_evicts_least_recently_used() -> None:
    pcm = bytes(range(0, 256)) * 4  # 1024 bytes = 512 samples
    cache = PromptCache(max_bytes=1100)  # room for two 512-byte encoded prompts
    a, b, c = (PromptKey("espeak", "en-us", text, "PCMU") for text in "abc")
    cache.put_pcm(a, pcm)
    cache.put_pcm(b, pcm)
    assert cache.get_pcm(a) is not None  # a is now the most recent
    cache.put_pcm(c, pcm)
    assert cache.get_pcm(b) is None and cache.get_pcm(a) is not None
    assert cache.size_bytes == 1024 and len(cache) == 2
    decoded = cache.get_pcm(a)
    assert decoded is not None and len(decoded) == len(pcm)
    # G.711 keeps 16-bit audio to within its quantisation step
    alaw = PromptKey("espeak", "en-us", "a", "PCMA")
    cache.put_pcm(alaw, pcm)
    assert cache.get_pcm(alaw) != cache.get_pcm(a)  # a different law, a different entry


def test_cache_refuses_a_prompt_larger_than_itself() -> None:
    cache = PromptCache(max_bytes=10)
    cache.put_pcm(PromptKey("e", "v", "t", "PCMU"), bytes(100))
    assert len(cache) == 0


def _drain(playout: PlayoutBuffer, until: threading.Event) -> list[bytes]:
    frames: list[bytes] = []
    while not until.is_set() or playout.pending_frames:
        frame = playout.read()
        if frame is None:
            time.sleep(0.001)
        else:
            frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def tts() -> EspeakEngine:
    return EspeakEngine()


def test_speaker_streams_the_first_sentence_before_the_rest_is_rendered(tts) -> None:
    playout = PlayoutBuffer(8000, max_seconds=60)
    speaker = Speaker(tts, playout)
    text = "Hello. " + "This is a much longer second sentence that takes a while to say. " * 6
    prompt = speaker.say(text)
    prompt.rendered.wait(10)
    assert prompt.error is None and prompt.tts_ready_at is not None
    first_piece = split_for_speech(text)[0]
    whole = sum(len(c) for c in tts.synthesize(text))
    # the first audio was ready before the whole prompt could have been synthesised in one go
    assert len(split_for_speech(text)) > 2 and first_piece == "Hello."
    assert playout.pending_frames * 320 * tts.sample_rate / 8000 >= whole * 0.8
    speaker.close()


def test_speaker_caches_static_prompts_and_reuses_them(tts) -> None:
    cache = PromptCache()
    playout = PlayoutBuffer(8000, max_seconds=60)
    speaker = Speaker(tts, playout, cache=cache)
    first = speaker.say("Welcome to the bank.", cacheable=True)
    first.rendered.wait(10)
    heard_first = [playout.read() for _ in range(playout.pending_frames)]
    second = speaker.say("Welcome to the bank.", cacheable=True)
    second.rendered.wait(10)
    heard_second = [playout.read() for _ in range(playout.pending_frames)]
    dynamic = speaker.say("You said 1234.", cacheable=False)
    dynamic.rendered.wait(10)
    speaker.close()
    assert not first.from_cache and second.from_cache and not dynamic.from_cache
    assert len(cache) == 1 and cache.hits == 1
    assert len(heard_first) == len(heard_second) > 10


def test_stopping_a_prompt_drops_its_audio_and_stops_rendering(tts) -> None:
    playout = PlayoutBuffer(8000, max_seconds=0.5)  # small: the speaker waits for room
    speaker = Speaker(tts, playout)
    prompt = speaker.say("This sentence is long enough to fill the small buffer. " * 5)
    deadline = time.monotonic() + 5
    while playout.pending_frames < playout.max_frames and time.monotonic() < deadline:
        time.sleep(0.01)
    assert speaker.stop(prompt) > 0
    assert prompt.rendered.wait(5)
    assert playout.pending_frames <= 1
    speaker.close()
