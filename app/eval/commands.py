"""`switchboard eval asr MANIFEST` and `switchboard eval calls SCENARIO`.

Exit codes: 0 done (and the gate passed), 1 the gate found a regression (asr) or a call failed
(calls), 2 bad input: a manifest, channel, grammar, engine or configuration that cannot be
evaluated, reported before any clip is recognised.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MAX_COHORT_VALUES = 50
"""A tag with more distinct values than this (an utterance id) is not a default cohort."""


def add_eval_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add `eval` and its subcommands to the `switchboard` parser."""
    from app.eval.calls import add_calls_parser

    parser = commands.add_parser(
        "eval", help="measure recognition on telephone audio, or run scripted calls"
    )
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_asr_parser(sub, add_config_option)
    add_calls_parser(sub, add_config_option)
    _add_digit_strings_parser(sub)
    _add_tts_parser(sub, add_config_option)


def _add_tts_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    tts = sub.add_parser(
        "tts",
        help="intelligibility of each voice on the phone (TTS -> G.711 -> Whisper -> WER) and "
        "its time to first audio",
    )
    add_config_option(tts)
    tts.add_argument(
        "--engine",
        action="append",
        metavar="NAME",
        help="a [tts] engine (repeat; default: the configured chain)",
    )
    tts.add_argument(
        "--prompts",
        type=Path,
        metavar="FILE",
        help="prompts, one a line (default: the dialplans' prompts)",
    )
    tts.add_argument("--codec", choices=("PCMU", "PCMA"), default="PCMU")
    tts.add_argument("--json", type=Path, metavar="FILE", help="write every prompt's result")
    tts.set_defaults(command=run_tts)


def run_tts(args: argparse.Namespace) -> int:
    """The `eval tts` command: every voice through the phone line to Whisper."""
    import dataclasses as dc
    import json

    from rich.console import Console
    from rich.table import Table

    from app.config import AUTO, load_config
    from app.dialog.dialplan import DialplanError, load_dialplans
    from app.eval.tts import dialplan_prompts, evaluate_voice, read_prompts
    from app.models.choose import choose_engines
    from app.server import StartupError, build_asr_engine, build_tts_engine

    err = Console(stderr=True)
    try:
        config = load_config(args.config, os.environ)
        config = choose_engines(config).config
        names = tuple(dict.fromkeys(args.engine or config.tts.chain))
        if args.prompts:
            prompts = read_prompts(args.prompts)
        else:
            plans = load_dialplans(config.dialplans.dir)
            templates = [
                t
                for plan in plans.values()
                for s in plan.steps.values()
                for _key, t in s.templates()
                if hasattr(t, "parts")
            ]
            prompts = dialplan_prompts(templates)
        listening = choose_engines(
            dc.replace(config, asr=dc.replace(config.asr, engine=AUTO, fallbacks=()))
        ).config
        if listening.asr.engine != "whisper":
            raise StartupError(
                "eval tts listens with Whisper: install a Whisper model first "
                "(`switchboard models pull faster-whisper-tiny.en`)"
            )
        listener = build_asr_engine("whisper", listening, os.environ)
        engines = {name: build_tts_engine(name, config, os.environ) for name in names}
    except (OSError, ValueError, StartupError, DialplanError) as exc:
        err.print(f"switchboard eval tts: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    except Exception as exc:  # an engine that cannot load: say which and why
        err.print(f"switchboard eval tts: {type(exc).__name__}: {exc}", markup=False)
        return EXIT_USAGE
    voices = {"piper": config.tts.piper.voice, "espeak": config.tts.espeak.voice}
    reports = []
    for name, engine in engines.items():
        err.print(f"{name}: {len(prompts)} prompts...", markup=False)
        reports.append(
            evaluate_voice(name, engine, voices.get(name), prompts, listener, args.codec)
        )
    table = Table(
        title=f"TTS on the phone ({args.codec}), heard by Whisper {listening.asr.whisper.model}"
    )
    columns = (
        "engine",
        "voice",
        "prompts",
        "wer",
        "exact",
        "digits_exact",
        "first_audio_ms_p50",
        "first_audio_ms_p95",
        "rtf",
    )
    for column in columns:
        table.add_column(column)
    for report in reports:
        row = report.summary()
        table.add_row(*(str(row[c]) for c in columns))
    Console(width=200).print(table)
    if args.json:
        args.json.write_text(
            json.dumps(
                [{**r.summary(), "detail": [dc.asdict(p) for p in r.prompts]} for r in reports],
                indent=2,
            )
        )
    return EXIT_OK


def _add_digit_strings_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from app.eval.digit_strings import Spec

    default = Spec()
    build = sub.add_parser(
        "digit-strings",
        help="build a manifest of digit strings (PINs, account numbers) from FSDD recordings",
        description="One speaker's single-digit clips joined with pauses, as a caller reads "
        "a number out; 8 kHz WAVs and a manifest.jsonl for `eval asr`.",
    )
    build.add_argument("fsdd", type=Path, metavar="FSDD", help="folder with FSDD's manifest.jsonl")
    build.add_argument("out", type=Path, metavar="OUT", help="folder to write")
    build.add_argument("--count", type=int, default=default.count, help="strings (default 100)")
    build.add_argument("--min-digits", type=int, default=default.min_digits)
    build.add_argument("--max-digits", type=int, default=default.max_digits)
    build.add_argument("--min-pause-ms", type=int, default=default.min_pause_ms)
    build.add_argument("--max-pause-ms", type=int, default=default.max_pause_ms)
    build.add_argument("--seed", type=int, default=default.seed)
    build.set_defaults(command=run_digit_strings)


def run_digit_strings(args: argparse.Namespace) -> int:
    """The `eval digit-strings` command: write the clips and print the manifest's path."""
    from app.eval.digit_strings import Spec, build

    spec = Spec(
        args.count,
        args.min_digits,
        args.max_digits,
        args.min_pause_ms,
        args.max_pause_ms,
        args.seed,
    )
    if not (
        spec.count > 0
        and 0 < spec.min_digits <= spec.max_digits
        and 0 <= spec.min_pause_ms <= spec.max_pause_ms
    ):
        print(
            "switchboard eval digit-strings: counts and pauses must be positive and ordered",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        print(build(args.fsdd, args.out, spec))
    except (OSError, ValueError, KeyError) as exc:
        print(f"switchboard eval digit-strings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _add_asr_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    asr = sub.add_parser(
        "asr",
        help="WER/CER, entity accuracy and latency of ASR engines on a manifest, per cohort",
        description="Each clip goes through a simulated telephone channel (8 kHz, G.711, "
        "optional noise and packet loss), then through every engine and grammar asked for.",
    )
    add_config_option(asr)
    asr.add_argument("manifest", type=Path, metavar="MANIFEST", help="JSONL or CSV manifest")
    asr.add_argument(
        "--engine",
        action="append",
        metavar="NAME",
        help="an [asr] engine (repeat for side by side; default: the configured chain)",
    )
    asr.add_argument(
        "--grammar",
        action="append",
        metavar="G",
        help="'open' (no constraint), a built-in grammar (digits, yes_no, number, date, ...) "
        "or 'phrases:a|b|c'; repeat to compare (default: open)",
    )
    asr.add_argument(
        "--codec", action="append", metavar="LAW", help="pcmu or pcma; repeat (default: pcmu)"
    )
    asr.add_argument(
        "--snr",
        action="append",
        metavar="DB",
        help="'clean' or a signal-to-noise ratio in dB; repeat (default: clean)",
    )
    asr.add_argument(
        "--noise",
        default="white",
        metavar="KIND",
        help="white, babble (other clips of the manifest) or a WAV file (default: white)",
    )
    asr.add_argument(
        "--loss",
        action="append",
        type=float,
        metavar="SHARE",
        help="share of 20 ms packets lost, e.g. 0.03; repeat (default: 0)",
    )
    asr.add_argument(
        "--burst", type=float, default=1.0, metavar="N", help="mean loss burst in packets"
    )
    asr.add_argument(
        "--cohort",
        action="append",
        metavar="TAG",
        help="a manifest tag to split results by; repeat (default: every tag with 2 to "
        f"{MAX_COHORT_VALUES} values)",
    )
    asr.add_argument("--sample", type=int, metavar="N", help="evaluate N clips drawn at random")
    asr.add_argument("--seed", type=int, default=0, help="channel noise, loss and sampling seed")
    asr.add_argument(
        "--lead-ms",
        type=int,
        default=300,
        help="silence fed before each clip, as the endpointer's pre-roll (default 300)",
    )
    asr.add_argument(
        "--tail-ms",
        type=int,
        default=400,
        help="silence fed after each clip, as the end-of-turn silence of a call (default 400)",
    )
    asr.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    asr.add_argument("--json", type=Path, metavar="FILE", help="write the full result as JSON")
    asr.add_argument("--html", type=Path, metavar="FILE", help="write an HTML report with plots")
    asr.add_argument("--markdown", type=Path, metavar="FILE", help="write the tables as Markdown")
    asr.add_argument(
        "--baseline", type=Path, metavar="FILE", help="a saved --json result to compare with"
    )
    asr.add_argument(
        "--max-regression",
        type=float,
        default=0.5,
        metavar="POINTS",
        help="largest WER rise allowed per cohort, in percentage points (default 0.5)",
    )
    asr.add_argument(
        "--min-clips",
        type=int,
        default=None,
        metavar="N",
        help="cohorts with fewer clips are not gated (default 30)",
    )
    asr.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    asr.set_defaults(command=run_asr)


def run_asr(args: argparse.Namespace) -> int:
    """The `eval asr` command: validate everything, run, report, gate."""
    from rich.console import Console

    from app.config import load_config
    from app.eval import asr, gate, report
    from app.eval.channel import ChannelError
    from app.eval.manifest import ManifestError, load_manifest
    from app.models.choose import choose_engines

    err = Console(stderr=True)
    out = Console() if sys.stdout.isatty() else Console(width=240)  # tables whole in a file
    try:
        config = choose_engines(load_config(args.config, os.environ)).config
        manifest = load_manifest(args.manifest)
        channels = _channels(args)
        grammars = tuple(asr.Grammar.parse(g) for g in dict.fromkeys(args.grammar or [asr.OPEN]))
        engine_names = tuple(dict.fromkeys(args.engine or config.asr.chain))
        if (
            args.jobs < 1
            or min(args.lead_ms, args.tail_ms) < 0
            or (args.sample is not None and args.sample < 1)
        ):
            raise asr.EvalError(
                "--jobs and --sample must be positive, --lead-ms and --tail-ms not negative"
            )
        if args.sample is not None and args.sample < len(manifest.clips):
            chosen = random.Random(args.seed).sample(range(len(manifest.clips)), args.sample)
            clips = tuple(manifest.clips[i] for i in sorted(chosen))
            manifest = dataclasses.replace(manifest, clips=clips)
        cohort_tags = _cohort_tags(args.cohort, manifest)
        baseline = report.load_json(args.baseline) if args.baseline else None
        plan = asr.Plan(
            engines=engine_names,
            grammars=grammars,
            channels=channels,
            seed=args.seed,
            lead_ms=args.lead_ms,
            tail_ms=args.tail_ms,
            jobs=args.jobs,
            sample=args.sample,
        )
        engines = asr.load_engines(engine_names, config)
    except (ManifestError, ChannelError, asr.EvalError, OSError, ValueError) as exc:
        err.print(f"switchboard eval asr: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    meta = asr.run_meta(manifest, plan, engines, config, cohort_tags, sys.argv)
    recognitions = _run_with_progress(manifest, plan, config, engines, quiet=args.quiet, err=err)
    result = asr.score(manifest, plan, recognitions, cohort_tags, meta)
    if not args.quiet:
        report.print_tables(result, out)
    if args.json:
        report.write_json(result, args.json)
    if args.html:
        report.write_html(result, args.html)
    if args.markdown:
        with args.markdown.open("w") as md:
            report.write_markdown(result, md)
    if baseline is None:
        return EXIT_OK
    try:
        verdict = gate.compare(
            result.as_dict(),
            baseline,
            args.max_regression,
            args.min_clips if args.min_clips is not None else gate.DEFAULT_MIN_CLIPS,
        )
    except gate.BaselineError as exc:
        err.print(f"switchboard eval asr: {args.baseline}: {exc}", markup=False)
        return EXIT_USAGE
    for line in verdict.missing:
        err.print(f"not in this run (baseline has it): {line}", markup=False)
    for item in verdict.regressions:
        err.print(f"REGRESSION {item.describe()}", markup=False, highlight=False)
    print(
        f"gate: {len(verdict.compared)} cohort figures compared with {args.baseline}, "
        f"{len(verdict.regressions)} worse by more than {args.max_regression} points",
        file=sys.stderr,
    )
    return EXIT_OK if verdict.passed else EXIT_FAILED


def _channels(args: argparse.Namespace) -> tuple:
    from app.eval.channel import Channel, ChannelError

    snrs: list[float | None] = []
    for text in dict.fromkeys(args.snr or ["clean"]):
        if text == "clean":
            snrs.append(None)
            continue
        try:
            snrs.append(float(text))
        except ValueError:
            raise ChannelError(f"--snr {text!r}: 'clean' or a number of dB") from None
    return tuple(
        Channel(codec=codec, snr_db=snr, noise=args.noise, loss=loss, burst_frames=args.burst)
        for codec in dict.fromkeys(args.codec or ["pcmu"])
        for snr in snrs
        for loss in dict.fromkeys(args.loss or [0.0])
    )


def _cohort_tags(asked: Sequence[str] | None, manifest) -> tuple[str, ...]:
    from app.eval.asr import EvalError

    values: dict[str, set[str]] = {}
    for clip in manifest.clips:
        for tag, value in clip.tags.items():
            values.setdefault(tag, set()).add(value)
    if asked:
        unknown = [t for t in asked if t not in values]
        if unknown:
            raise EvalError(
                f"--cohort {', '.join(unknown)}: not a tag of the manifest "
                f"(it has {', '.join(values) or 'none'})"
            )
        return tuple(dict.fromkeys(asked))
    chosen: list[str] = []
    groupings: set[tuple[str, ...]] = set()
    for tag, distinct in values.items():
        signature = _partition([c.tags.get(tag, "") for c in manifest.clips])
        if 2 <= len(distinct) <= MAX_COHORT_VALUES and signature not in groupings:
            chosen.append(tag)  # a tag that splits the clips as an earlier one does adds nothing
            groupings.add(signature)
    return tuple(chosen)


def _partition(labels: Sequence[str]) -> tuple[int, ...]:
    """The grouping `labels` make, independent of the label names (speaker vs accent)."""
    first: dict[str, int] = {}
    return tuple(first.setdefault(label, len(first)) for label in labels)


def _run_with_progress(manifest, plan, config, engines, *, quiet: bool, err) -> list:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from app.eval.asr import run_plan

    if quiet:
        return run_plan(manifest, plan, config, engines)
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(
            f"{len(plan.channels)} channel(s) x {len(plan.grammars)} grammar(s) x "
            f"{len(plan.engines)} engine(s)",
            total=len(manifest.clips),
        )
        return run_plan(
            manifest, plan, config, engines, progress=lambda n: progress.advance(task, n)
        )
