"""`switchboard eval calls SCENARIO...`: scripted SIP callers against a running server.

Each call of a scenario (app/eval/scenario.py) is dialled with a real SIP peer: sipp does the
signalling, our RTP endpoint (app/eval/rtp.py) plays the caller's audio as G.711 and its keys as
RFC 4733 events, paced by the wire clock (app/eval/caller.py). Once the call is over its records
are read back from the server's store (`[store] url` of `--config`, or `--db`), found under the
SIP Call-ID that we set, and checked against the call's expectations: variables, steps reached,
outcome, prompts said, turn latency. Records are written through a spool, so they are polled
until the call row has ended.

What the records can show: steps are those of turns (ask, menu) and events (webhook, llm,
transfer, record, a DTMF answer, an error); `say`, `branch`, `set` and `hangup` steps leave no
record, so they cannot be expected. "Said" is matched against the prompts of the turns (what the
bot asked, rendered), not against `say` steps' text, which is not recorded.

Reported per call: pass or fail with the reasons; over all calls: passed, containment
(contained / all), turn latency p50/p95 measured on the wire, and WER of the live path (what the
server transcribed for each `say` with a `text` reference, the turn found by time).

Exit codes: 0 every call passed, 1 a call failed, 2 a bad scenario, configuration or target,
reported before anything is dialled.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports wait until a command runs: `switchboard --help` stays quick
    from app.eval.dialer import CallResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_calls_parser(
    eval_commands: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add `calls` under `switchboard eval`."""
    parser = eval_commands.add_parser(
        "calls",
        help="dial the running server with scripted callers and check their call records",
        description="Each call of each SCENARIO (YAML) is dialled with sipp and an RTP caller "
        "that speaks WAV files and presses keys; its call records are then checked against "
        "the call's expectations.",
    )
    add_config_option(parser)
    parser.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO")
    parser.add_argument(
        "--target",
        metavar="URI",
        help="sip:[NUMBER@]HOST[:PORT] to dial (NUMBER: for calls that name none; "
        "default: the config's [sip] bind and udp_port)",
    )
    parser.add_argument("--host", help="the server's SIP host (instead of --target)")
    parser.add_argument("--port", type=int, help="the server's SIP UDP port")
    parser.add_argument(
        "--db", metavar="URL", help="the server's call records (default: config [store] url)"
    )
    parser.add_argument(
        "--audio-dir", type=Path, metavar="DIR", help="where audio files are (overrides audio_dir)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, metavar="N", help="calls at once (default 1)"
    )
    parser.add_argument("--codec", choices=("PCMU", "PCMA"), default="PCMU")
    parser.add_argument(
        "--call", action="append", metavar="NAME", help="run only the calls of this name (repeat)"
    )
    parser.add_argument(
        "--records-wait",
        type=float,
        default=10.0,
        metavar="S",
        help="how long to wait for a call's records after it ends (default 10)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep sipp's logs of every call")
    parser.set_defaults(command=run_calls)


def run_calls(args: argparse.Namespace) -> int:
    """The `eval calls` command: check everything, dial, check the records, report."""
    from rich.console import Console

    from app.config import ConfigError, load_config
    from app.eval import dialer
    from app.eval.scenario import ScenarioError, load_scenario
    from app.eval.sipp import SippError, check_sipp, local_address

    err = Console(stderr=True, highlight=False)
    if args.concurrency < 1:
        return _usage("--concurrency must be at least 1")
    try:
        config = load_config(args.config, os.environ)
        target = dialer.resolve_target(args.target, args.host, args.port, config)
    except (ConfigError, ValueError) as exc:
        return _usage(str(exc))
    errors: list[str] = []
    specs = []
    for path in args.scenarios:
        try:
            scenario = load_scenario(path, args.audio_dir, target.number)
        except ScenarioError as exc:
            errors.extend(exc.errors)
            continue
        specs.extend(c for c in scenario.calls if not args.call or c.name in args.call)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return _usage(f"{len(errors)} error(s) in the scenario(s); nothing was dialled")
    if not specs:
        return _usage(f"no call named {', '.join(args.call)} in the scenario(s)")
    try:
        check_sipp()
        local_ip = local_address(target.host, target.port)
        records = dialer.open_records(args.db or config.store.url)
    except (SippError, dialer.RecordsError) as exc:
        return _usage(str(exc))
    settings = dialer.Settings(
        target=target,
        local_ip=local_ip,
        codec=args.codec,
        concurrency=args.concurrency,
        records_wait_s=args.records_wait,
        keep=args.keep,
    )
    err.print(
        f"switchboard eval calls: {len(specs)} call(s) to {target.host}:{target.port}, "
        f"{args.concurrency} at a time"
    )
    try:
        results, workdir = dialer.run_calls(specs, settings, records, progress=_progress(err))
    except KeyboardInterrupt:
        err.print("interrupted: calls hung up")
        return EXIT_FAILED
    except RuntimeError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        records.dispose()
    summary = dialer.summarise(results)
    print_results(results, summary, Console(highlight=False))
    if workdir is not None:
        err.print(f"sipp logs: {workdir}", markup=False)
    if args.json is not None:
        import json

        document = {"summary": summary, "calls": [r.as_json() for r in results]}
        try:
            args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        except OSError as exc:
            print(f"switchboard: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK if all(r.passed for r in results) else EXIT_FAILED


def _usage(message: str) -> int:
    print(f"switchboard: {message}", file=sys.stderr)
    return EXIT_USAGE


def _progress(err: Any) -> Callable[[CallResult], None]:
    from rich.markup import escape

    def report(result: CallResult) -> None:
        verdict = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
        where = escape(f"{result.name} ({result.scenario.name})")
        err.print(f"  {verdict} {where} in {result.duration_s:.0f} s")

    return report


# ------------------------------------------------------------------------------ output


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_results(results: Sequence[CallResult], summary: dict[str, Any], console: Any) -> None:
    """Per call: pass/fail and why; then the summary figures."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Scripted calls", title_justify="left")
    for column in ("call", "number", "result", "outcome", "turn latency ms", "heard", "reasons"):
        table.add_column(column, overflow="fold")
    for result in results:
        latencies = ", ".join(
            _ms(t.latency_ms) + ("*" if t.overlap else "") for t in result.latencies
        )
        heard = "; ".join(
            repr(t.heard) if t.heard is not None else "(no turn)" for t in result.transcripts
        )
        table.add_row(
            f"{escape(result.name)}\n[dim]{escape(result.scenario.name)}[/]",
            escape(result.number),
            "[green]PASS[/]" if result.passed else "[red]FAIL[/]",
            escape(result.outcome or "-"),
            latencies or "-",
            escape(heard or "-"),
            escape("\n".join(result.reasons) or "-"),
        )
    console.print(table)
    for line in summary_lines(summary):
        console.print(line, soft_wrap=True, markup=False)


def summary_lines(summary: dict[str, Any]) -> list[str]:
    wer = summary["live_wer"]
    lines = [
        f"calls passed {summary['passed']}/{summary['calls']}; containment "
        f"{_percent(summary['containment'])} ({summary['contained']}/{summary['calls']} "
        "contained)",
    ]
    for key, what in (("turn_latency_ms", "after speech"), ("key_latency_ms", "after keys")):
        latency = summary[key]
        lines.append(
            f"turn latency on the wire {what}: p50 {_ms(latency['p50'])} ms, "
            f"p95 {_ms(latency['p95'])} ms, max {_ms(latency['max'])} ms (n={latency['n']})"
        )
    lines[-1] += "; * = the bot spoke over the input: not counted"
    if wer["utterances"]:
        lines.append(
            f"live WER {_percent(wer['wer'])} over {wer['utterances']} utterance(s), "
            f"{wer['ref_words']} reference words; digits exact {_percent(wer['entity_accuracy'])}"
        )
    else:
        lines.append("live WER: no `say` with a `text` reference")
    return lines


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
