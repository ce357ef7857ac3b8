"""What the fallback chain costs a turn: PocketSphinx direct vs inside a `FallbackAsrEngine`.

The chain runs each turn's engine on a thread of its own and the call's worker only queues
frames, so a hung engine cannot stall a call; this measures what that isolation costs on the
healthy path, side by side in one run (alternating direct and chained on the same utterances):

  feed      time the call's worker spends in `feed()` per 20 ms frame (p50/p99/max): direct it
            is the decode itself, chained a queue put
  finish    time from `finish()` to the final result (what the caller waits after the
            end-of-turn silence), p50/p95
  cpu       process CPU seconds per second of audio
  text      transcripts identical between the two

and, for the failure path, how long a turn waits when the first engine hangs at the final
(a stand-in that never answers) before PocketSphinx, replayed the turn, answers.

    .venv/bin/python bench/asr_chain.py                 # 12 utterances, fed at real time
    .venv/bin/python bench/asr_chain.py --utterances 24 --speed 4

Speech: FSDD digit strings (four speakers) from ../shared/data.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.asr.base import AsrEngine, AsrResult, AsrStream, RecognitionOptions  # noqa: E402
from app.asr.fallback import FallbackAsrEngine  # noqa: E402
from app.asr.pocketsphinx import PocketSphinxEngine  # noqa: E402
from app.media.audio import CALL_RATE, FRAME_MS, iter_frames  # noqa: E402
from app.resilience import CircuitBreaker, EngineGuard, Limits  # noqa: E402
from tests.sip.rtp_pcap import build_digit_utterance, silence  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SPEAKERS = ("jackson", "nicolas", "george", "yweweler")
DIGITS = RecognitionOptions(grammar="digits")


class _Hung(AsrEngine):
    """Takes audio, never gives a final: the failure the chain must get past."""

    name = "hung"
    sample_rate = CALL_RATE

    def __init__(self) -> None:
        self.release = threading.Event()

    def open_stream(self, options: RecognitionOptions | None = None) -> AsrStream:
        release = self.release

        class Stream(AsrStream):
            def feed(self, pcm: bytes) -> AsrResult | None:
                return None

            def finish(self) -> AsrResult:
                release.wait()
                return AsrResult("", 0.0, True)

        return Stream()


def run_turn(engine: AsrEngine, audio: bytes, speed: float) -> tuple[list[float], float, str]:
    """Feed `audio` frame by frame at `speed` x real time; (feed seconds per frame, finish
    seconds, text)."""
    stream = engine.open_stream(DIGITS)
    feeds = []
    tick = FRAME_MS / 1000 / speed
    next_at = time.monotonic()
    for frame in iter_frames([audio], CALL_RATE):
        started = time.monotonic()
        stream.feed(frame)
        feeds.append(time.monotonic() - started)
        next_at += tick
        time.sleep(max(0.0, next_at - time.monotonic()))
    started = time.monotonic()
    result = stream.finish()
    return feeds, time.monotonic() - started, result.text


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=12)
    parser.add_argument("--speed", type=float, default=1.0, help="x real time (1: as a call)")
    args = parser.parse_args()

    sphinx = PocketSphinxEngine(pool_size=2)
    chained = FallbackAsrEngine(
        [(sphinx, EngineGuard("pocketsphinx", Limits(1.5, 2.0), CircuitBreaker("pocketsphinx")))]
    )
    utterances = [
        build_digit_utterance(SHARED, SPEAKERS[i % 4], f"{(i * 7919) % 10000:04d}", seed=i)
        + silence(300)
        for i in range(args.utterances)
    ]
    audio_s = sum(len(u) for u in utterances) / (2 * CALL_RATE)
    results: dict[str, dict] = {}
    for name in ("direct", "chained"):
        results[name] = {"feed": [], "finish": [], "texts": [], "cpu": 0.0}
    for audio in utterances:  # alternate, so both sides see the same machine conditions
        for name, engine in (("direct", sphinx), ("chained", chained)):
            cpu = time.process_time()
            feeds, finish, text = run_turn(engine, audio, args.speed)
            side = results[name]
            side["cpu"] += time.process_time() - cpu
            side["feed"] += feeds
            side["finish"].append(finish)
            side["texts"].append(text)

    print(f"{args.utterances} FSDD digit strings, {audio_s:.1f} s of audio, fed at {args.speed}x")
    print(f"{'':10}{'feed p50':>10}{'p99':>8}{'max':>8}{'finish p50':>12}{'p95':>8}{'cpu/s':>8}")
    for name, side in results.items():
        feed = [v * 1000 for v in side["feed"]]
        finish = [v * 1000 for v in side["finish"]]
        print(
            f"{name:10}{statistics.median(feed):10.3f}{pct(feed, 0.99):8.2f}{max(feed):8.1f}"
            f"{statistics.median(finish):12.1f}{pct(finish, 0.95):8.1f}"
            f"{side['cpu'] / audio_s:8.3f}"
        )
    pairs = zip(results["direct"]["texts"], results["chained"]["texts"], strict=True)
    same = sum(a == b for a, b in pairs)
    ratio = statistics.median(results["chained"]["finish"]) / statistics.median(
        results["direct"]["finish"]
    )
    print(f"transcripts identical: {same}/{args.utterances}; finish p50 chained/direct {ratio:.2f}")

    hung = _Hung()
    failing = FallbackAsrEngine(
        [
            (hung, EngineGuard("hung", Limits(1.5, 0.5), CircuitBreaker("hung", failures=99))),
            (sphinx, EngineGuard("pocketsphinx", Limits(1.5, 2.0), CircuitBreaker("ps"))),
        ]
    )
    waits = []
    for audio in utterances[:4]:
        _feeds, finish, _text = run_turn(failing, audio, args.speed)
        waits.append(finish * 1000)
    hung.release.set()
    print(
        "first engine hung at the final (limit 500 ms): finish took "
        f"{', '.join(f'{w:.0f}' for w in waits)} ms (its limit + PocketSphinx on the replay)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
