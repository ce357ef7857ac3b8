"""`switchboard eval asr`: every clip through a telephone channel, then through each engine.

A run crosses three things: channels (codec, noise, loss), grammars (the constraint a dialplan
step puts on the recogniser, or none: open vocabulary) and engines. Each clip is degraded once
per channel and the same audio goes to every engine and grammar, so the columns of a result are
comparable clip for clip. An engine hears a clip the way it hears a caller: 20 ms frames at 8
kHz through the server's resampler to the engine's rate, with the line's silence before it
(`lead_ms`: the endpointer's pre-roll, which the live path feeds too) and after it (`tail_ms`:
the end-of-turn silence), both quiet frames through the codec as a phone sends them; then
`finish()`.

Per engine and grammar: latency is from the last frame fed to the final result (what a caller
waits after the endpoint), RTF the time in `feed` and `finish` over the audio's duration. With
`jobs` > 1 the work is spread over processes, each loading its own engines; latency is then
measured with that many recognitions competing for the CPU, as on a busy server.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from app import __version__
from app.asr.base import AsrEngine, AsrError, RecognitionOptions
from app.asr.grammars import BUILTIN_GRAMMARS
from app.config import Config
from app.eval.channel import Babble, Channel, LoopedNoise, NoiseSource, clip_seed, simulate
from app.eval.channel import white_noise as _white
from app.eval.manifest import Clip, Manifest
from app.eval.metrics import ClipScore, percentile, score_clip, summarise
from app.eval.textnorm import normalise
from app.media.audio import CALL_RATE, FRAME_MS, frame_bytes, iter_frames
from app.media.g711 import Codec
from app.media.resample import Resampler, resample

OPEN = "open"
"""The grammar name for no constraint: the engine's own vocabulary."""
ENGINE_PACKAGES = {
    "pocketsphinx": "pocketsphinx",
    "vosk": "vosk",
    "whisper": "faster-whisper",
    "openai": "httpx",
}
SECRET_SETTINGS = frozenset(("api_key",))


class EvalError(RuntimeError):
    """The evaluation cannot run as asked (an engine failed to load, a bad grammar...)."""


@dataclass(frozen=True, slots=True)
class Grammar:
    """A constraint as a dialplan step gives it: a built-in grammar, phrases, or none."""

    name: str
    options: RecognitionOptions

    @classmethod
    def parse(cls, spec: str, language: str = "en-US") -> Grammar:
        """ "open", a built-in grammar ("digits", "yes_no", ...), or "phrases:a|b|c"."""
        if spec == OPEN:
            return cls(OPEN, RecognitionOptions(language=language))
        if spec in BUILTIN_GRAMMARS:
            return cls(spec, RecognitionOptions(grammar=spec, language=language))
        if spec.startswith("phrases:"):
            phrases = tuple(p.strip() for p in spec[len("phrases:") :].split("|") if p.strip())
            if phrases:
                return cls(spec, RecognitionOptions(phrases=phrases, language=language))
        known = ", ".join((OPEN, *BUILTIN_GRAMMARS, "phrases:a|b"))
        raise EvalError(f"grammar {spec!r}: expected one of {known}")


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run does: the same plan (and seed) gives the same degraded audio."""

    engines: tuple[str, ...]
    grammars: tuple[Grammar, ...]
    channels: tuple[Channel, ...]
    seed: int = 0
    lead_ms: int = 300
    tail_ms: int = 400
    jobs: int = 1
    sample: int | None = None
    """Clips drawn at random (with `seed`) from the manifest; None: all of them."""

    def describe(self) -> dict[str, object]:
        return {
            "engines": list(self.engines),
            "grammars": {g.name: _options(g.options) for g in self.grammars},
            "channels": [c.describe() for c in self.channels],
            "seed": self.seed,
            "lead_ms": self.lead_ms,
            "tail_ms": self.tail_ms,
            "jobs": self.jobs,
            "sample": self.sample,
        }


@dataclass(frozen=True, slots=True)
class Recognition:
    """One clip heard by one engine under one grammar and channel."""

    clip: int
    """Index into the manifest's clips."""
    channel: str
    engine: str
    grammar: str
    hypothesis: str
    latency_ms: float
    processing_ms: float
    audio_ms: float
    error: str = ""


@dataclass
class Result:
    """Everything a run measured, and what it takes to reproduce it."""

    meta: dict[str, Any]
    scores: list[dict[str, Any]] = field(default_factory=list)
    """One per variant, channel and cohort (cohort "all" first): a metrics Summary as dict."""
    speed: list[dict[str, Any]] = field(default_factory=list)
    """One per variant and channel: latency p50/p95 and RTF."""
    clips: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "scores": self.scores, "speed": self.speed, "clips": self.clips}


# -- engines ------------------------------------------------------------------------------


def load_engines(
    names: Sequence[str], config: Config, environ: Mapping[str, str] | None = None
) -> dict[str, AsrEngine]:
    """Each named engine built as the server builds it, or EvalError saying which failed."""
    from app.models import ModelMissing
    from app.server import build_asr_engine

    environ = os.environ if environ is None else environ
    engines = {}
    for name in names:
        try:
            engines[name] = build_asr_engine(name, config, environ)
        except (AsrError, ModelMissing) as exc:
            raise EvalError(f"asr engine {name}: {exc}") from None
    return engines


def engine_info(name: str, engine: AsrEngine, config: Config) -> dict[str, Any]:
    """Version, model and settings of an engine: what a figure needs to be reproduced."""
    package = ENGINE_PACKAGES.get(name, name)
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        version = None
    settings = getattr(config.asr, name, None)
    settings_dict = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else {}
    for key in SECRET_SETTINGS & settings_dict.keys():
        settings_dict[key] = "***" if settings_dict[key] else ""
    model = getattr(engine, "model_path", None) or getattr(engine, "model", None)
    if model is None and name == "pocketsphinx":
        model = "bundled en-us"
    return {
        "package": package,
        "version": version,
        "model": str(model) if model is not None else None,
        "sample_rate": engine.sample_rate,
        "settings": settings_dict,
    }


def recognise(
    engine: AsrEngine, audio: bytes, options: RecognitionOptions, lead: bytes, tail: bytes
) -> tuple[str, float, float]:
    """(text, latency ms from the last frame to the final, processing ms in feed + finish)."""
    resampler = (
        Resampler(CALL_RATE, engine.sample_rate) if engine.sample_rate != CALL_RATE else None
    )
    stream = engine.open_stream(options)
    busy = 0.0
    try:
        for frame in iter_frames((lead, audio, tail), CALL_RATE):
            pcm = resampler.process(frame) if resampler else frame
            started = time.perf_counter()
            stream.feed(pcm)
            busy += time.perf_counter() - started
        started = time.perf_counter()
        if resampler is not None:
            tail = resampler.flush()
            if tail:
                stream.feed(tail)
        result = stream.finish()
        latency = time.perf_counter() - started
    except BaseException:
        stream.close()
        raise
    return result.text, latency * 1000, (busy + latency) * 1000


# -- the run ------------------------------------------------------------------------------


class _Worker:
    """Degrades clips and recognises them; one per process (engines are loaded per process)."""

    def __init__(self, manifest: Manifest, plan: Plan, engines: Mapping[str, AsrEngine]) -> None:
        self.manifest = manifest
        self.plan = plan
        self.engines = engines
        self.noises: dict[str, NoiseSource] = {}
        pool: list[Callable[[], bytes]] = [
            (lambda c=c: resample(c.read_pcm(), c.sample_rate, CALL_RATE)) for c in manifest.clips
        ]
        for channel in plan.channels:
            if channel.snr_db is None or channel.noise in self.noises:
                continue
            if channel.noise == "white":
                self.noises["white"] = _white
            elif channel.noise == "babble":
                self.noises["babble"] = Babble(pool)
            else:
                self.noises[channel.noise] = LoopedNoise(Path(channel.noise))

    def run(self, index: int) -> list[Recognition]:
        clip = self.manifest.clips[index]
        pcm = clip.read_pcm()
        out = []
        for channel in self.plan.channels:
            rng = np.random.default_rng(clip_seed(self.plan.seed, clip.name, channel))
            audio = simulate(pcm, clip.sample_rate, channel, rng, self.noises.get(channel.noise))
            lead = _codec_silence(channel, self.plan.lead_ms)
            tail = _codec_silence(channel, self.plan.tail_ms)
            audio_ms = 1000 * (len(lead) + len(audio) + len(tail)) / (2 * CALL_RATE)
            for grammar in self.plan.grammars:
                for name, engine in self.engines.items():
                    out.append(
                        self._one(
                            index, channel, grammar, name, engine, (lead, audio, tail), audio_ms
                        )
                    )
        return out

    @staticmethod
    def _one(
        index: int,
        channel: Channel,
        grammar: Grammar,
        name: str,
        engine: AsrEngine,
        parts: tuple[bytes, bytes, bytes],
        audio_ms: float,
    ) -> Recognition:
        lead, audio, tail = parts
        try:
            text, latency, busy = recognise(engine, audio, grammar.options, lead, tail)
        except AsrError as exc:  # one clip's failure is a result (scored as all deleted)
            return Recognition(
                index, channel.label, name, grammar.name, "", 0.0, 0.0, audio_ms, str(exc)
            )
        return Recognition(index, channel.label, name, grammar.name, text, latency, busy, audio_ms)


def _codec_silence(channel: Channel, tail_ms: int) -> bytes:
    """`tail_ms` (whole frames) of a quiet line after the codec: a phone's "silence"."""
    law = Codec.from_name(channel.codec)
    quiet = bytes(frame_bytes(CALL_RATE) * (tail_ms // FRAME_MS))
    return law.decode(law.encode(quiet))


_PROCESS_WORKER: _Worker | None = None


def _init_process(manifest: Manifest, plan: Plan, config: Config) -> None:
    global _PROCESS_WORKER
    _PROCESS_WORKER = _Worker(manifest, plan, load_engines(plan.engines, config))


def _run_in_process(index: int) -> list[Recognition]:
    assert _PROCESS_WORKER is not None, "worker process not initialised"
    return _PROCESS_WORKER.run(index)


def run_plan(
    manifest: Manifest,
    plan: Plan,
    config: Config,
    engines: Mapping[str, AsrEngine],
    progress: Callable[[int], None] = lambda done: None,
) -> list[Recognition]:
    """Every clip of `manifest` through `plan`; `progress(n)` after each clip."""
    if plan.jobs <= 1:
        worker = _Worker(manifest, plan, engines)
        results = []
        for index in range(len(manifest.clips)):
            results.extend(worker.run(index))
            progress(1)
        return results
    results = []
    with ProcessPoolExecutor(
        plan.jobs, initializer=_init_process, initargs=(manifest, plan, config)
    ) as pool:
        for batch in pool.map(_run_in_process, range(len(manifest.clips)), chunksize=4):
            results.extend(batch)
            progress(1)
    return results


# -- scoring ------------------------------------------------------------------------------


def cohorts(clip: Clip, tag_names: Sequence[str]) -> Iterator[str]:
    """The cohorts a clip counts in: "all", then "tag=value" for each tag asked for."""
    yield "all"
    for tag in tag_names:
        if tag in clip.tags:
            yield f"{tag}={clip.tags[tag]}"


def score(
    manifest: Manifest,
    plan: Plan,
    recognitions: Sequence[Recognition],
    cohort_tags: Sequence[str],
    meta: dict[str, Any],
) -> Result:
    """Figures per engine/grammar, channel and cohort, with the per-clip detail."""
    result = Result(meta=meta)
    references = [normalise(c.text) for c in manifest.clips]
    groups: dict[tuple[str, str, str, str], list[ClipScore]] = {}
    for rec in recognitions:
        clip = manifest.clips[rec.clip]
        heard = normalise(rec.hypothesis)
        clip_score = score_clip(references[rec.clip], heard)
        for cohort in cohorts(clip, cohort_tags):
            groups.setdefault((rec.engine, rec.grammar, rec.channel, cohort), []).append(clip_score)
        result.clips.append(
            {
                "audio": clip.name,
                "channel": rec.channel,
                "engine": rec.engine,
                "grammar": rec.grammar,
                "reference": references[rec.clip],
                "hypothesis": heard,
                "raw": rec.hypothesis,
                "word_errors": clip_score.word_errors,
                "ref_words": clip_score.ref_words,
                "entity_ok": clip_score.entity_ok,
                "latency_ms": round(rec.latency_ms, 2),
                "error": rec.error or None,
            }
        )
    order = _order(plan, cohort_tags)
    for key in sorted(groups, key=order):
        engine, grammar, channel, cohort = key
        summary = summarise(groups[key], seed=plan.seed)
        result.scores.append(
            {"engine": engine, "grammar": grammar, "channel": channel, "cohort": cohort}
            | summary.as_dict()
        )
    result.speed = _speed(recognitions, order)
    return result


def _speed(
    recognitions: Sequence[Recognition], order: Callable[[tuple[str, str, str, str]], Any]
) -> list[dict[str, Any]]:
    """Latency p50/p95 and RTF per engine/grammar and channel (failed recognitions counted)."""
    by_key: dict[tuple[str, str, str], list[Recognition]] = {}
    for rec in recognitions:
        by_key.setdefault((rec.engine, rec.grammar, rec.channel), []).append(rec)
    rows = []
    for (engine, grammar, channel), recs in sorted(
        by_key.items(), key=lambda item: order((*item[0], "all"))
    ):
        done = [r for r in recs if not r.error]
        latencies = [r.latency_ms for r in done]
        audio_ms = sum(r.audio_ms for r in done)
        rows.append(
            {
                "engine": engine,
                "grammar": grammar,
                "channel": channel,
                "recognitions": len(done),
                "errors": len(recs) - len(done),
                "latency_p50_ms": _rounded(percentile(latencies, 50)),
                "latency_p95_ms": _rounded(percentile(latencies, 95)),
                "rtf": round(sum(r.processing_ms for r in done) / audio_ms, 4) if done else None,
            }
        )
    return rows


def _order(
    plan: Plan, cohort_tags: Sequence[str]
) -> Callable[[tuple[str, str, str, str]], tuple[int, int, int, int, str]]:
    """Sort key: plan order of channel, grammar and engine; "all" before the tagged cohorts."""
    engines = {e: i for i, e in enumerate(plan.engines)}
    grammars = {g.name: i for i, g in enumerate(plan.grammars)}
    channels = {c.label: i for i, c in enumerate(plan.channels)}
    tags = {t: i for i, t in enumerate(cohort_tags)}

    def key(item: tuple[str, str, str, str]) -> tuple[int, int, int, int, str]:
        engine, grammar, channel, cohort = item
        tag = -1 if cohort == "all" else tags.get(cohort.split("=", 1)[0], len(tags))
        return (channels[channel], grammars[grammar], engines[engine], tag, cohort)

    return key


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def run_meta(
    manifest: Manifest,
    plan: Plan,
    engines: Mapping[str, AsrEngine],
    config: Config,
    cohort_tags: Sequence[str],
    argv: Sequence[str],
) -> dict[str, Any]:
    """What the result file records so that any figure in it can be reproduced."""
    return {
        "tool": "switchboard eval asr",
        "switchboard": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": list(argv),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "manifest": manifest.describe(),
        "plan": plan.describe(),
        "cohort_tags": list(cohort_tags),
        "engines": {name: engine_info(name, e, config) for name, e in engines.items()},
        "normalisation": "app.eval.textnorm.normalise (case, punctuation, numbers as digits)",
    }


def _options(options: RecognitionOptions) -> dict[str, object]:
    return {k: v for k, v in dataclasses.asdict(options).items() if v not in (None, (), "")}
