"""Real-time factor of the per-call pipeline on FSDD digit strings.

For each caller utterance (4-6 digits of one FSDD speaker joined by natural pauses, 8 kHz) it
runs what a call's worker does for one turn: webrtcvad endpointing frame by frame, PocketSphinx
streaming recognition under the digits grammar, the dialogue's read-back, eSpeak NG synthesis
and resampling to the call rate. RTF = processing seconds / audio seconds (below 1 is faster
than real time). It then runs the same turns on 1, 2 and 4 threads at once, as concurrent calls
would, and prints the throughput of each relative to one thread: a ratio measured in one run,
so machine noise affects both sides alike.

    .venv/bin/python bench/pipeline_rtf.py [--per-speaker 8] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from app.asr.base import RecognitionOptions  # noqa: E402
from app.asr.numbers import spoken_digits  # noqa: E402
from app.asr.pocketsphinx import PocketSphinxEngine  # noqa: E402
from app.call.endpointing import Endpointer, SpeechEnded, SpeechStarted  # noqa: E402
from app.dialog.template import parse_template  # noqa: E402
from app.media.audio import CALL_RATE, iter_frames, pcm_duration  # noqa: E402
from app.media.resample import Resampler  # noqa: E402
from app.tts.espeak import EspeakEngine  # noqa: E402

SPEAKERS = ("jackson", "nicolas", "george", "yweweler")
REPLY = parse_template("You said {account | digits}. Thank you.")  # dialplans/demo.yaml


@dataclass
class Turn:
    speaker: str
    digits: str
    pcm: bytes


@dataclass
class TurnTiming:
    vad_s: float
    asr_s: float
    tts_s: float
    caller_audio_s: float
    reply_audio_s: float
    correct: bool


def read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        if wav.getframerate() != CALL_RATE or wav.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 8 kHz 16-bit audio")
        return wav.readframes(wav.getnframes())


def make_turns(data: Path, per_speaker: int, seed: int = 1) -> list[Turn]:
    rng = random.Random(seed)
    turns = []
    for speaker in SPEAKERS:
        for _ in range(per_speaker):
            digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 6)))
            pcm = bytearray(bytes(2 * CALL_RATE // 2))  # 0.5 s lead-in
            for digit in digits:
                pcm += read_wav(data / "fsdd" / f"{digit}_{speaker}_{rng.randrange(50)}.wav")
                pcm += bytes(2 * CALL_RATE * rng.randint(200, 600) // 1000)
            pcm += bytes(2 * CALL_RATE)  # 1 s: the endpointer needs trailing silence
            turns.append(Turn(speaker, digits, bytes(pcm)))
    return turns


def run_turn(turn: Turn, asr: PocketSphinxEngine, tts: EspeakEngine) -> TurnTiming:
    options = RecognitionOptions(grammar="digits")
    to_asr = Resampler(CALL_RATE, asr.sample_rate) if asr.sample_rate != CALL_RATE else None
    endpointer = Endpointer(sample_rate=CALL_RATE)
    vad_s = asr_s = 0.0
    stream = None
    text = ""
    for frame in iter_frames([turn.pcm], CALL_RATE):
        t0 = time.perf_counter()
        event = endpointer.process(frame)
        t1 = time.perf_counter()
        vad_s += t1 - t0
        if isinstance(event, SpeechStarted):
            stream = asr.open_stream(options)
            audio = event.pre_roll
        elif stream is not None and endpointer.in_speech:
            audio = frame
        else:
            audio = b""
        if stream is not None and audio:
            stream.feed(to_asr.process(audio) if to_asr else audio)
        if isinstance(event, SpeechEnded) and stream is not None:
            text = stream.finish().text
            stream = None
        asr_s += time.perf_counter() - t1
    if stream is not None:
        t0 = time.perf_counter()
        text = stream.finish().text
        asr_s += time.perf_counter() - t0
    heard = spoken_digits(text) or ""

    t0 = time.perf_counter()
    reply = REPLY.render({"account": heard})
    to_call = Resampler(tts.sample_rate, CALL_RATE)
    reply_pcm = b"".join(to_call.process(chunk) for chunk in tts.synthesize(reply))
    reply_pcm += to_call.flush()
    tts_s = time.perf_counter() - t0
    return TurnTiming(
        vad_s,
        asr_s,
        tts_s,
        pcm_duration(len(turn.pcm), CALL_RATE),
        pcm_duration(len(reply_pcm), CALL_RATE),
        heard == turn.digits,
    )


def throughput(turns: list[Turn], threads: int, asr, tts) -> float:
    """Seconds of caller audio processed per wall-clock second with `threads` calls at once."""
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        timings = list(pool.map(lambda t: run_turn(t, asr, tts), turns))
    wall = time.perf_counter() - start
    return sum(t.caller_audio_s for t in timings) / wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--per-speaker", type=int, default=8, help="digit strings per speaker")
    args = parser.parse_args()
    if not (args.data / "fsdd").is_dir():
        parser.error(f"no FSDD data under {args.data}")

    t0 = time.perf_counter()
    asr = PocketSphinxEngine()
    tts = EspeakEngine()
    load_s = time.perf_counter() - t0
    turns = make_turns(args.data, args.per_speaker)
    run_turn(turns[0], asr, tts)  # warm caches and pools before timing

    timings = [run_turn(turn, asr, tts) for turn in turns]
    caller_s = sum(t.caller_audio_s for t in timings)
    reply_s = sum(t.reply_audio_s for t in timings)
    vad_s = sum(t.vad_s for t in timings)
    asr_s = sum(t.asr_s for t in timings)
    tts_s = sum(t.tts_s for t in timings)
    correct = sum(t.correct for t in timings)

    print(
        f"Switchboard per-call pipeline, {len(turns)} FSDD digit strings "
        f"({args.per_speaker} per speaker x {len(SPEAKERS)}), engines loaded in {load_s:.2f} s"
    )
    print(
        f"ASR: {asr.name} at {asr.sample_rate} Hz, digits grammar; TTS: espeak-ng "
        f"{tts.sample_rate} Hz -> {CALL_RATE} Hz"
    )
    print()
    print(f"{'stage':<28}{'processing s':>14}{'audio s':>10}{'RTF':>8}")
    rows = [
        ("VAD endpointing (webrtcvad)", vad_s, caller_s),
        ("ASR streaming (grammar)", asr_s, caller_s),
        ("TTS + resample (reply)", tts_s, reply_s),
        ("whole turn", vad_s + asr_s + tts_s, caller_s + reply_s),
    ]
    for name, spent, audio in rows:
        print(f"{name:<28}{spent:>14.3f}{audio:>10.1f}{spent / audio:>8.4f}")
    print()
    print(f"digit strings recognised exactly: {correct}/{len(turns)} ({correct / len(turns):.0%})")
    print()
    print("concurrent calls (threads), caller audio seconds processed per wall second:")
    base = throughput(turns, 1, asr, tts)
    print(f"  1 thread : {base:7.1f} x real time  (ratio 1.00)")
    for threads in (2, 4):
        rate = throughput(turns, threads, asr, tts)
        print(f"  {threads} threads: {rate:7.1f} x real time  (ratio {rate / base:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
