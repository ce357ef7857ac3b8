"""`switchboard models list | pull NAME | install PATH | verify [NAME]`: the operator's side.

Exit codes: 0 done, 1 a download, install or verification failed, 2 a usage or configuration
error. Failures are one line on stderr; rich's progress bar shows only on a terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from app.models.catalogue import KINDS, Catalogue, load_catalogue
from app.models.errors import CatalogueError, ModelError, UsageError
from app.models.layout import is_installed

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace], int]


def add_models_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add `models` and its subcommands to the `switchboard` parser."""
    models = commands.add_parser(
        "models", help="list, download, install and verify model files (Vosk, Whisper, Piper)"
    )
    sub = models.add_subparsers(title="commands", required=True, metavar="COMMAND")

    listing = sub.add_parser("list", help="the catalogue's models, with what is installed")
    listing.set_defaults(command=_guarded(_list))

    pull = sub.add_parser("pull", help="download a catalogue model into the models folder")
    pull.add_argument("name", metavar="NAME", help="a name from `switchboard models list`")
    pull.add_argument("--force", action="store_true", help="download and install it again")
    pull.add_argument(
        "--allow-unverified",
        action="store_true",
        help="install a model whose publisher gives no SHA-256 (checked by size and MD5 only)",
    )
    pull.add_argument(
        "--mirror",
        metavar="URL",
        help="fetch from this mirror: it replaces the catalogue's URL prefixes "
        "(https://huggingface.co/, https://alphacephei.com/vosk/models/)",
    )
    pull.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pull.set_defaults(command=_guarded(_pull))

    install = sub.add_parser(
        "install",
        help="install from a local .zip/.tar.gz, a model folder or a Piper .onnx (no network)",
    )
    install.add_argument("path", type=Path, metavar="PATH")
    install.add_argument("--name", help="the model's name, when it is not a catalogue model")
    install.add_argument("--kind", choices=KINDS, help="the model's kind, likewise")
    install.add_argument("--force", action="store_true", help="replace an installed model")
    install.set_defaults(command=_guarded(_install))

    verify = sub.add_parser(
        "verify", help="check installed models: layout, then every file's size and SHA-256"
    )
    verify.add_argument("name", nargs="?", metavar="NAME", help="one model (default: all)")
    verify.set_defaults(command=_guarded(_verify))

    for parser in (listing, pull, install, verify):
        add_config_option(parser)
        parser.add_argument(
            "--models-dir", type=Path, metavar="DIR", help="the models folder (default: config)"
        )
        parser.add_argument(
            "--catalogue",
            type=Path,
            metavar="FILE",
            help="a catalogue TOML to use instead of the built-in one",
        )


def _guarded(command: Command) -> Command:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (CatalogueError, UsageError) as exc:
            return _fail(str(exc), EXIT_USAGE)
        except ModelError as exc:
            return _fail(str(exc), EXIT_FAILED)
        except OSError as exc:  # a full disk, a folder we may not write
            return _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), EXIT_FAILED)
        except KeyboardInterrupt:
            return _fail(
                "interrupted: nothing was installed; a partial download is kept and the same "
                "command continues it",
                EXIT_FAILED,
            )

    return run


def _fail(message: str, code: int) -> int:
    print(f"switchboard: {message}", file=sys.stderr)
    return code


def _models_dir(args: argparse.Namespace) -> Path:
    if args.models_dir is not None:
        return args.models_dir.expanduser().resolve()
    from app.config import load_config

    return load_config(args.config, os.environ).models.dir


def _catalogue(args: argparse.Namespace) -> Catalogue:
    return load_catalogue(args.catalogue)


def _list(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    models_dir, catalogue = _models_dir(args), _catalogue(args)
    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    for column in ("NAME", "KIND", "LANGUAGE", "SIZE", "LICENCE", "INSTALLED"):
        table.add_column(column, no_wrap=column in ("NAME", "SIZE"))
    for entry in catalogue.entries.values():
        size = human_size(entry.size) + (" (no SHA-256)" if entry.unverified else "")
        installed = "yes" if is_installed(models_dir, entry.kind, entry.name) else "no"
        table.add_row(entry.name, entry.kind, entry.language, size, entry.licence, installed)
    console = _console()
    console.print(table)
    console.print(f"models folder: {models_dir}", highlight=False)
    return EXIT_OK


def _pull(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from app.models.installer import pull

    models_dir, catalogue = _models_dir(args), _catalogue(args)
    entry = catalogue.get(args.name)
    if entry is not None and entry.unverified and args.allow_unverified and not args.quiet:
        print(
            f"switchboard: warning: {entry.name} has no published SHA-256; checking its size"
            f"{' and MD5' if any(r.md5 for r in entry.downloads) else ''} only",
            file=sys.stderr,
        )
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_console(sys.stderr),
        disable=args.quiet or not sys.stderr.isatty(),
    )
    with progress:
        result = pull(
            catalogue,
            args.name,
            models_dir,
            force=args.force,
            allow_unverified=args.allow_unverified,
            mirror=args.mirror,
            progress=progress,
        )
    print(result.message)
    return EXIT_OK


def _install(args: argparse.Namespace) -> int:
    from app.models.installer import install_local

    result = install_local(
        _catalogue(args),
        args.path,
        _models_dir(args),
        name=args.name,
        kind=args.kind,
        force=args.force,
    )
    print(result.message)
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from app.models.verify import verify_installed

    models_dir, catalogue = _models_dir(args), _catalogue(args)
    checks = verify_installed(catalogue, models_dir, args.name)
    console = _console()
    if not checks:
        console.print(f"no models installed in {models_dir}", highlight=False)
        return EXIT_OK
    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    table.add_column("NAME", no_wrap=True)
    table.add_column("KIND")
    table.add_column("STATUS", no_wrap=True)
    table.add_column("DETAIL", overflow="fold")
    for check in checks:
        table.add_row(check.name, check.kind, "ok" if check.ok else "FAILED", check.detail)
    console.print(table)
    bad = [check.name for check in checks if not check.ok]
    if bad:
        return _fail(f"{len(bad)} model(s) failed verification: {', '.join(bad)}", EXIT_FAILED)
    return EXIT_OK


def _console(file: object = None) -> Console:
    from rich.console import Console

    stream = file if file is not None else sys.stdout
    wide = None if getattr(stream, "isatty", lambda: False)() else 200
    return Console(file=stream, width=wide, highlight=False)  # type: ignore[arg-type]


def human_size(size: int) -> str:
    """Bytes as a short decimal figure: 41.2 MB, 1.9 GB."""
    value, unit = float(size), "B"
    for bigger in ("kB", "MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
