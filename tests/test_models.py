"""`switchboard models` against a real file server on loopback, with tiny fake models.

The fakes have the layouts the engines check (a Vosk folder, a CTranslate2 Whisper folder, a
Piper voice) filled with a few KB of random bytes; each test writes its own catalogue with their
real sizes and SHA-256, pointing at the loopback server.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main
from app.models import ModelMissing, load_catalogue, resolve_model, resolve_piper_voices
from app.models.catalogue import parse_catalogue
from app.models.errors import CatalogueError
from app.models.layout import WHISPER_FILES
from tests.file_server import FileServer

VOSK_FILES = {
    "am/final.mdl": 6000,
    "conf/mfcc.conf": 200,
    "conf/model.conf": 150,
    "graph/HCLr.fst": 3000,
    "graph/Gr.fst": 2500,
    "graph/words.txt": 400,
    "ivector/final.ie": 1200,
}
WHISPER = {"model.bin": 20000, "config.json": 300, "tokenizer.json": 2000, "vocabulary.txt": 500}


def _bytes(seed: str, size: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return out[:size]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def vosk_tree(seed: str = "vosk") -> dict[str, bytes]:
    return {rel: _bytes(f"{seed}/{rel}", size) for rel, size in VOSK_FILES.items()}


def whisper_tree(seed: str = "whisper") -> dict[str, bytes]:
    return {rel: _bytes(f"{seed}/{rel}", size) for rel, size in WHISPER.items()}


def voice_files(name: str, seed: str = "voice") -> dict[str, bytes]:
    config = {"audio": {"sample_rate": 22050}, "espeak": {"voice": "en-us"}}
    return {
        f"{name}.onnx": _bytes(f"{seed}/{name}", 5000),
        f"{name}.onnx.json": json.dumps(config).encode(),
    }


def zip_of(tree: dict[str, bytes], top: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for rel, data in tree.items():
            bundle.writestr(f"{top}/{rel}" if top else rel, data)
    return buffer.getvalue()


def tar_of(tree: dict[str, bytes], top: str = "", links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for rel, data in tree.items():
            info = tarfile.TarInfo(f"{top}/{rel}" if top else rel)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            bundle.addfile(info)
    return buffer.getvalue()


def write_tree(root: Path, tree: dict[str, bytes]) -> Path:
    for rel, data in tree.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


VOSK_ZIP = zip_of(vosk_tree(), "test-vosk-1.0")
WHISPER_FILES_DATA = whisper_tree()
VOICE = voice_files("en_XX-test-medium")


def catalogue_text(base: str, *, vosk_sha: str | None = None, prefixes: str = "") -> str:
    """A catalogue of one archive model, one file-list model and one voice at `base`."""
    lines = [f'mirror_prefixes = ["{prefixes}"]' if prefixes else ""]
    lines += [
        "[[model]]",
        'name = "test-vosk"',
        'kind = "vosk"',
        'description = "a fake Vosk model"',
        'language = "en-US"',
        'licence = "Apache-2.0"',
        "[model.archive]",
        f'url = "{base}/vosk/test-vosk-1.0.zip"',
        f"size = {len(VOSK_ZIP)}",
        f'sha256 = "{vosk_sha or _sha(VOSK_ZIP)}"',
        'format = "zip"',
        'folder = "test-vosk-1.0"',
        "[[model]]",
        'name = "test-whisper"',
        'kind = "whisper"',
        'description = "a fake faster-whisper model"',
        'language = "en"',
        'licence = "MIT"',
    ]
    for rel, data in WHISPER_FILES_DATA.items():
        lines += [
            "[[model.files]]",
            f'url = "{base}/whisper/{rel}"',
            f"size = {len(data)}",
            f'sha256 = "{_sha(data)}"',
            f'path = "{rel}"',
        ]
    lines += [
        "[[model]]",
        'name = "en_XX-test-medium"',
        'kind = "piper"',
        'description = "a fake Piper voice"',
        'language = "en-XX"',
        'licence = "CC0"',
    ]
    for rel, data in VOICE.items():
        lines += [
            "[[model.files]]",
            f'url = "{base}/voices/{rel}"',
            f"size = {len(data)}",
            f'sha256 = "{_sha(data)}"',
            f'path = "{rel}"',
        ]
    return "\n".join(lines) + "\n"


def site_files() -> dict[str, bytes]:
    files = {"/vosk/test-vosk-1.0.zip": VOSK_ZIP}
    files.update({f"/whisper/{rel}": data for rel, data in WHISPER_FILES_DATA.items()})
    files.update({f"/voices/{rel}": data for rel, data in VOICE.items()})
    return files


@pytest.fixture
def site() -> Iterator[FileServer]:
    with FileServer(site_files()) as server:
        yield server


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def catalogue(tmp_path: Path, site: FileServer) -> Path:
    path = tmp_path / "catalogue.toml"
    path.write_text(catalogue_text(site.url))
    return path


def models(*args: str, catalogue: Path | None = None, models_dir: Path) -> int:
    argv = ["models", *args, "--models-dir", str(models_dir)]
    if catalogue is not None:
        argv += ["--catalogue", str(catalogue)]
    return main(argv)


def leftovers(models_dir: Path) -> list[str]:
    """What a finished pull must not leave: staging folders and partial downloads."""
    hidden = [models_dir / ".staging", models_dir / ".downloads"]
    return sorted(
        str(p.relative_to(models_dir)) for h in hidden if h.exists() for p in h.rglob("*")
    )


# -- pull


def test_pull_archive_model_installs_verifies_and_resolves(catalogue, models_dir, site, capsys):
    assert models("pull", "test-vosk", "--quiet", catalogue=catalogue, models_dir=models_dir) == 0

    installed = models_dir / "test-vosk"
    assert "installed test-vosk (vosk)" in capsys.readouterr().out
    for rel, data in vosk_tree().items():
        assert (installed / rel).read_bytes() == data
    assert leftovers(models_dir) == []
    assert [r.path for r in site.requests] == ["/vosk/test-vosk-1.0.zip"]
    assert resolve_model(models_dir, "vosk", "test-vosk") == installed

    assert models("verify", catalogue=catalogue, models_dir=models_dir) == 0
    out = capsys.readouterr().out
    assert "test-vosk" in out and "ok" in out and "7 files match the install record" in out


def test_pull_file_list_model_and_voice(catalogue, models_dir, site, capsys):
    assert models("pull", "test-whisper", "-q", catalogue=catalogue, models_dir=models_dir) == 0
    assert models("pull", "en_XX-test-medium", catalogue=catalogue, models_dir=models_dir) == 0

    for rel, data in WHISPER_FILES_DATA.items():
        assert (models_dir / "test-whisper" / rel).read_bytes() == data
    voices = resolve_piper_voices(models_dir, "", "en_XX-test-medium")
    assert voices == models_dir / "piper"
    assert sorted(p.name for p in voices.iterdir()) == sorted(VOICE)
    assert resolve_model(models_dir, "whisper", "test-whisper") == models_dir / "test-whisper"
    assert leftovers(models_dir) == []
    capsys.readouterr()

    assert models("verify", catalogue=catalogue, models_dir=models_dir) == 0
    out = capsys.readouterr().out
    assert "4 files match the catalogue" in out and "2 files match the catalogue" in out


def test_pull_of_an_installed_model_says_so_and_downloads_nothing(
    catalogue, models_dir, site, capsys
):
    assert models("pull", "test-vosk", catalogue=catalogue, models_dir=models_dir) == 0
    fetched = len(site.requests)
    capsys.readouterr()

    assert models("pull", "test-vosk", catalogue=catalogue, models_dir=models_dir) == 0
    assert "already installed" in capsys.readouterr().out
    assert len(site.requests) == fetched

    assert models("pull", "test-vosk", "--force", catalogue=catalogue, models_dir=models_dir) == 0
    assert len(site.requests) == fetched + 1
    assert (models_dir / "test-vosk" / "am" / "final.mdl").is_file()
    assert leftovers(models_dir) == []


def test_checksum_mismatch_installs_nothing_and_names_both_hashes(
    tmp_path, models_dir, site, capsys
):
    wrong = _sha(b"not the archive")
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(catalogue_text(site.url, vosk_sha=wrong))

    assert models("pull", "test-vosk", catalogue=catalogue, models_dir=models_dir) == 1

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"SHA-256 mismatch: expected {wrong}, got {_sha(VOSK_ZIP)}" in err
    assert not (models_dir / "test-vosk").exists()
    assert leftovers(models_dir) == []


def test_interrupted_download_installs_nothing_and_the_next_pull_resumes(
    catalogue, models_dir, site, capsys
):
    half = len(VOSK_ZIP) // 2
    site.cut("/vosk/test-vosk-1.0.zip", after=half)

    assert models("pull", "test-vosk", catalogue=catalogue, models_dir=models_dir) == 1
    err = capsys.readouterr().err
    assert f"stopped at {half} of {len(VOSK_ZIP)} bytes" in err
    assert "run the same command again" in err
    assert not (models_dir / "test-vosk").exists()
    assert not (models_dir / ".staging").exists()
    part = models_dir / ".downloads" / "test-vosk" / "test-vosk-1.0.zip.part"
    assert part.read_bytes() == VOSK_ZIP[:half]

    assert models("pull", "test-vosk", catalogue=catalogue, models_dir=models_dir) == 0
    first, second = site.requests
    assert "range" not in first.headers
    assert second.headers["range"] == f"bytes={half}-"
    assert (models_dir / "test-vosk" / "am" / "final.mdl").read_bytes() == vosk_tree()[
        "am/final.mdl"
    ]
    assert leftovers(models_dir) == []
    assert models("verify", "test-vosk", catalogue=catalogue, models_dir=models_dir) == 0


def test_a_server_without_range_support_is_downloaded_again_from_the_start(
    tmp_path, models_dir, capsys
):
    with FileServer(site_files(), ranges=False) as site:
        catalogue = tmp_path / "catalogue.toml"
        catalogue.write_text(catalogue_text(site.url))
        site.cut("/whisper/model.bin", after=7000)
        assert models("pull", "test-whisper", catalogue=catalogue, models_dir=models_dir) == 1

        assert models("pull", "test-whisper", catalogue=catalogue, models_dir=models_dir) == 0

        asked = [r for r in site.requests if r.path == "/whisper/model.bin"]
        assert [r.headers.get("range") for r in asked] == [None, "bytes=7000-"]
    model = (models_dir / "test-whisper" / "model.bin").read_bytes()
    assert model == WHISPER_FILES_DATA["model.bin"]
    assert leftovers(models_dir) == []


def test_mirror_replaces_the_documented_prefix(tmp_path, models_dir, site, capsys):
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(
        catalogue_text("https://models.invalid/files", prefixes="https://models.invalid/")
    )
    site.files["/mirror/files/vosk/test-vosk-1.0.zip"] = VOSK_ZIP

    code = models(
        "pull",
        "test-vosk",
        "--mirror",
        f"{site.url}/elsewhere",
        catalogue=catalogue,
        models_dir=models_dir,
    )
    assert code == 1
    assert "/elsewhere/files/vosk/test-vosk-1.0.zip: HTTP 404" in capsys.readouterr().err

    code = models(
        "pull",
        "test-vosk",
        "--mirror",
        f"{site.url}/mirror/",
        catalogue=catalogue,
        models_dir=models_dir,
    )
    assert code == 0
    assert site.requests[-1].path == "/mirror/files/vosk/test-vosk-1.0.zip"
    assert (models_dir / "test-vosk" / "am" / "final.mdl").is_file()
    assert leftovers(models_dir) == []


def test_unknown_names_and_unverified_models_are_usage_errors(tmp_path, models_dir, site, capsys):
    catalogue = tmp_path / "catalogue.toml"
    data = VOICE["en_XX-test-medium.onnx"]
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    text = catalogue_text(site.url).replace(
        f'sha256 = "{_sha(data)}"', f'sha256 = ""\nmd5 = "{md5}"'
    )
    text = text.replace('licence = "CC0"', 'licence = "CC0"\nunverified = true')
    catalogue.write_text(text)

    assert models("pull", "test-vosc", catalogue=catalogue, models_dir=models_dir) == 2
    assert "did you mean test-vosk" in capsys.readouterr().err

    assert models("pull", "en_XX-test-medium", catalogue=catalogue, models_dir=models_dir) == 2
    assert "--allow-unverified" in capsys.readouterr().err
    assert site.requests == []

    code = models(
        "pull",
        "en_XX-test-medium",
        "--allow-unverified",
        catalogue=catalogue,
        models_dir=models_dir,
    )
    assert code == 0
    assert "checking its size and MD5 only" in capsys.readouterr().err
    assert (models_dir / "piper" / "en_XX-test-medium.onnx").read_bytes() == data


def test_two_pulls_of_one_model_do_not_write_the_same_file(catalogue, models_dir, capsys):
    import fcntl

    lock = models_dir / ".downloads" / ".test-vosk.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("a") as other_pull:
        fcntl.flock(other_pull, fcntl.LOCK_EX)
        assert models("pull", "test-vosk", catalogue=catalogue, models_dir=models_dir) == 2
    assert "another `switchboard models pull test-vosk` is running" in capsys.readouterr().err
    assert models("pull", "test-vosk", catalogue=catalogue, models_dir=models_dir) == 0


# -- install (offline)


def test_install_a_catalogue_archive_identified_by_checksum(catalogue, models_dir, tmp_path):
    archive = tmp_path / "copied-from-elsewhere.zip"
    archive.write_bytes(VOSK_ZIP)

    assert models("install", str(archive), catalogue=catalogue, models_dir=models_dir) == 0

    assert (models_dir / "test-vosk" / "graph" / "HCLr.fst").is_file()
    assert models("verify", "test-vosk", catalogue=catalogue, models_dir=models_dir) == 0
    assert leftovers(models_dir) == []


def test_install_local_models_from_tar_gz_zip_and_folders(catalogue, models_dir, tmp_path, capsys):
    other = vosk_tree("another vosk")
    archive = tmp_path / "my-vosk.tar.gz"
    archive.write_bytes(tar_of(other, "my-vosk"))
    assert models("install", str(archive), catalogue=catalogue, models_dir=models_dir) == 2
    assert "give --name and --kind" in capsys.readouterr().err

    code = models(
        "install",
        str(archive),
        "--name",
        "my-vosk",
        "--kind",
        "vosk",
        catalogue=catalogue,
        models_dir=models_dir,
    )
    assert code == 0
    assert (models_dir / "my-vosk" / "am" / "final.mdl").read_bytes() == other["am/final.mdl"]

    flat = tmp_path / "flat.zip"  # no top folder in the archive
    flat.write_bytes(zip_of(vosk_tree("flat")))
    code = models(
        "install",
        str(flat),
        "--name",
        "flat-vosk",
        "--kind",
        "vosk",
        catalogue=catalogue,
        models_dir=models_dir,
    )
    assert code == 0 and (models_dir / "flat-vosk" / "conf" / "mfcc.conf").is_file()

    folder = write_tree(tmp_path / "downloaded-whisper", WHISPER_FILES_DATA)
    assert models("install", str(folder), catalogue=catalogue, models_dir=models_dir) == 0
    assert "installed test-whisper (whisper)" in capsys.readouterr().out

    vosk_folder = write_tree(tmp_path / "some-vosk", vosk_tree("folder"))
    assert models("install", str(vosk_folder), catalogue=catalogue, models_dir=models_dir) == 2
    assert "--name some-vosk --kind vosk" in capsys.readouterr().err

    incomplete = write_tree(tmp_path / "half-whisper", {"model.bin": b"x"})
    code = models(
        "install",
        str(incomplete),
        "--name",
        "half",
        "--kind",
        "whisper",
        catalogue=catalogue,
        models_dir=models_dir,
    )
    assert code == 1
    assert "config.json, tokenizer.json missing" in capsys.readouterr().err
    assert not (models_dir / "half").exists()

    assert models("verify", catalogue=catalogue, models_dir=models_dir) == 0
    out = capsys.readouterr().out
    for name in ("my-vosk", "flat-vosk", "test-whisper"):
        assert name in out
    assert leftovers(models_dir) == []


def test_install_a_piper_voice_from_its_onnx(catalogue, models_dir, tmp_path, capsys):
    write_tree(tmp_path / "usb", VOICE)
    onnx = tmp_path / "usb" / "en_XX-test-medium.onnx"
    assert models("install", str(onnx), catalogue=catalogue, models_dir=models_dir) == 0
    assert resolve_piper_voices(models_dir, "", "en_XX-test-medium") == models_dir / "piper"

    own = write_tree(tmp_path / "own", voice_files("de_DE-mine-low", seed="mine"))
    assert (
        models(
            "install", str(own / "de_DE-mine-low.onnx"), catalogue=catalogue, models_dir=models_dir
        )
        == 0
    )
    assert (models_dir / "piper" / "de_DE-mine-low.onnx.json").is_file()
    assert models("verify", catalogue=catalogue, models_dir=models_dir) == 0

    (own / "de_DE-mine-low.onnx.json").unlink()
    code = models(
        "install",
        str(own / "de_DE-mine-low.onnx"),
        "--force",
        catalogue=catalogue,
        models_dir=models_dir,
    )
    assert code == 2 and ".onnx.json beside it" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kind", "archive"),
    [
        ("zip ..", zip_of({"../escaped.txt": b"x", "model/am/final.mdl": b"m"})),
        ("tar ..", tar_of({"model/../../escaped.txt": b"x"})),
        ("tar absolute", tar_of({"/tmp/escaped.txt": b"x"})),
        ("tar link", tar_of(vosk_tree(), "model", links={"model/passwd": "../../../etc/passwd"})),
    ],
)
def test_malicious_archives_are_refused(kind, archive, catalogue, models_dir, tmp_path, capsys):
    path = tmp_path / ("evil.zip" if kind.startswith("zip") else "evil.tar.gz")
    path.write_bytes(archive)

    code = models(
        "install",
        str(path),
        "--name",
        "evil",
        "--kind",
        "vosk",
        catalogue=catalogue,
        models_dir=models_dir,
    )

    assert code == 1
    err = capsys.readouterr().err
    assert any(w in err for w in ("climbs out", "absolute path", "points outside")), err
    assert not (models_dir / "evil").exists()
    assert not list(tmp_path.rglob("escaped.txt"))
    assert leftovers(models_dir) == []


# -- verify


def test_verify_detects_a_corrupted_file(catalogue, models_dir, capsys):
    assert models("pull", "test-vosk", catalogue=catalogue, models_dir=models_dir) == 0
    assert models("pull", "test-whisper", catalogue=catalogue, models_dir=models_dir) == 0
    capsys.readouterr()

    final = models_dir / "test-vosk" / "am" / "final.mdl"
    data = bytearray(final.read_bytes())
    data[100] ^= 0xFF
    final.write_bytes(bytes(data))
    (models_dir / "test-whisper" / "tokenizer.json").write_bytes(b"{}")

    assert models("verify", catalogue=catalogue, models_dir=models_dir) == 1
    captured = capsys.readouterr()
    assert "am/final.mdl: SHA-256" in captured.out
    assert "tokenizer.json: 2 bytes, expected 2000" in captured.out
    assert "2 model(s) failed verification: test-vosk, test-whisper" in captured.err

    assert models("pull", "test-vosk", catalogue=catalogue, models_dir=models_dir) == 1
    assert "pass --force" in capsys.readouterr().err


def test_verify_of_a_model_installed_by_hand_checks_its_layout(catalogue, models_dir, capsys):
    write_tree(models_dir / "hand-made", vosk_tree("hand"))
    write_tree(models_dir / "broken", {"am/final.mdl": b"m"})

    assert models("verify", catalogue=catalogue, models_dir=models_dir) == 1
    out = capsys.readouterr().out
    assert "no checksums on record" in out
    assert "conf/mfcc.conf missing" in out


# -- resolve_model at start-up


def test_resolve_model_messages_name_the_model_the_folder_and_the_command(tmp_path):
    models_dir = tmp_path / "models"

    with pytest.raises(ModelMissing) as missing:
        resolve_model(models_dir, "vosk", "vosk-model-small-en-us-0.15")
    message = str(missing.value)
    assert "'vosk-model-small-en-us-0.15' is not installed in" in message
    assert str(models_dir) in message
    assert "`switchboard models pull vosk-model-small-en-us-0.15`" in message
    assert "switchboard models install" in message
    assert isinstance(missing.value, RuntimeError)

    with pytest.raises(ModelMissing, match=r"not in the catalogue \(close: faster-whisper-tiny"):
        resolve_model(models_dir, "whisper", "faster-whisper-tiny")

    with pytest.raises(ModelMissing, match="is a piper model, not a vosk one"):
        resolve_model(models_dir, "vosk", "en_US-lessac-medium")

    write_tree(models_dir / "faster-whisper-base.en", {"model.bin": b"x"})
    with pytest.raises(ModelMissing, match=r"incomplete .*pull faster-whisper-base.en --force"):
        resolve_model(models_dir, "whisper", "faster-whisper-base.en")

    own = write_tree(tmp_path / "elsewhere" / "my-whisper", WHISPER_FILES_DATA)
    assert resolve_model(models_dir, "whisper", str(own)) == own
    with pytest.raises(ModelMissing, match=r"model folder .*nowhere not found"):
        resolve_model(models_dir, "vosk", str(tmp_path / "nowhere"))


def test_resolve_piper_voices(tmp_path):
    models_dir = tmp_path / "models"
    with pytest.raises(ModelMissing, match="`switchboard models pull en_US-lessac-medium`"):
        resolve_piper_voices(models_dir, "", "en_US-lessac-medium")

    own = write_tree(tmp_path / "voices", voice_files("en_XX-own-low"))
    assert resolve_piper_voices(models_dir, str(own), "en_XX-own-low") == own
    assert resolve_piper_voices(models_dir, str(own / "en_XX-own-low.onnx"), "ignored") == own
    with pytest.raises(ModelMissing, match=r"en_XX-other-low.onnx missing.*voices setting empty"):
        resolve_piper_voices(models_dir, str(own), "en_XX-other-low")


# -- list and the catalogue


def test_models_list_shows_the_catalogue_and_what_is_installed(catalogue, models_dir, capsys):
    assert main(["models", "list", "--models-dir", str(models_dir)]) == 0
    out = capsys.readouterr().out
    for entry in load_catalogue().entries.values():
        assert entry.name in out
    assert "faster-whisper-base.en" in out and "MIT" in out and "41.2 MB" in out
    assert "yes" not in out

    assert models("pull", "test-whisper", catalogue=catalogue, models_dir=models_dir) == 0
    capsys.readouterr()
    assert models("list", catalogue=catalogue, models_dir=models_dir) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line}
    assert rows["test-whisper"][-1] == "yes"
    assert rows["test-vosk"][-1] == "no"


def test_models_dir_comes_from_the_config_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SWITCHBOARD_MODELS__DIR", raising=False)
    config = tmp_path / "switchboard.toml"
    config.write_text('[models]\ndir = "speech-models"\n')
    assert main(["models", "list", "--config", str(config)]) == 0
    assert f"models folder: {tmp_path / 'speech-models'}" in capsys.readouterr().out

    bad = tmp_path / "bad.toml"
    bad.write_text("[models]\ndirr = 1\n")
    assert main(["models", "verify", "--config", str(bad)]) == 2


def test_a_broken_catalogue_is_a_usage_error(tmp_path, capsys):
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text('[[model]]\nname = "x"\nkind = "vosk"\n')
    assert main(["models", "list", "--catalogue", str(catalogue), "--models-dir", "m"]) == 2
    assert capsys.readouterr().err.startswith("switchboard: ")


def test_the_shipped_catalogue_is_complete_and_checkable():
    catalogue = load_catalogue()
    wanted = {
        "vosk-model-small-en-us-0.15",
        "vosk-model-en-us-0.22",
        "faster-whisper-tiny.en",
        "faster-whisper-base.en",
        "faster-whisper-small.en",
        "en_US-lessac-medium",
    }
    assert wanted <= set(catalogue.entries)
    for entry in catalogue.entries.values():
        assert entry.licence.strip() and entry.description.strip(), entry.name
        assert entry.downloads, entry.name
        for remote in entry.downloads:
            assert remote.url.startswith("https://"), remote.url
            assert remote.size > 0
            if entry.unverified:
                assert remote.sha256 == "" and remote.md5, entry.name
            else:
                assert len(remote.sha256) == 64, (entry.name, remote.url)
        if entry.kind == "whisper":
            assert set(WHISPER_FILES) <= {r.path for r in entry.files}
            assert all("/resolve/" in r.url and "/main/" not in r.url for r in entry.files)
        if entry.kind == "piper":
            assert all("/resolve/v1.0.0/" in r.url for r in entry.files)
        if entry.kind == "vosk":
            assert entry.archive is not None and entry.archive.folder == entry.name
    unverified = sorted(e.name for e in catalogue.entries.values() if e.unverified)
    assert unverified == ["vosk-model-en-us-0.22"]


def test_whisper_layout_matches_the_engine():
    from app.asr.whisper import MODEL_FILES

    assert tuple(MODEL_FILES) == WHISPER_FILES


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda t: t.replace('kind = "vosk"', 'kind = "kaldi"'), "kind must be one of"),
        (lambda t: t.replace('format = "zip"', 'format = "rar"'), "format must be one of"),
        (lambda t: t.replace('licence = "MIT"\n', ""), "licence must be a non-empty string"),
        (lambda t: t.replace('path = "model.bin"', 'path = "../model.bin"'), "relative path"),
        (lambda t: t.replace("size = ", "sizes = ", 1), "unknown key(s): sizes"),
        (lambda t: t.replace(_sha(VOSK_ZIP), ""), "mark the model `unverified = true`"),
    ],
)
def test_catalogue_errors_are_caught_on_load(change, problem):
    text = catalogue_text("https://example.invalid")
    with pytest.raises(CatalogueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_catalogue(change(text), "test.toml")
