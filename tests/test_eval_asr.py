"""`switchboard eval asr`: normalisation, scoring, the channel, manifests, the gate, the command.

Scoring is checked on hand-made cases whose answers are worked out in the comments; the channel
on signals whose properties are known (a sine's SNR, a loss model's rate and burst length); the
command end to end with PocketSphinx on FSDD clips (real speech, read from ../shared/data).
"""

from __future__ import annotations

import json
import math
import wave
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from app.eval.channel import (
    Babble,
    Channel,
    ChannelError,
    active_power,
    add_noise,
    conceal,
    loss_mask,
    simulate,
    white_noise,
)
from app.eval.gate import BaselineError, compare
from app.eval.manifest import ManifestError, load_manifest
from app.eval.metrics import score_clip, summarise
from app.eval.textnorm import digit_string, normalise

# -- normalisation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("It's fine.", "its fine"),
        ("Twenty-three", "2 3"),
        ("23", "2 3"),
        ("two three", "2 3"),
        ("4,711", "4 7 1 1"),
        ("one hundred and five", "1 0 5"),
        ("a hundred", "1 0 0"),
        ("nineteen eighty four", "1 9 8 4"),
        ("oh four two", "0 4 2"),
        ("zero oh oh seven", "0 0 0 7"),
        ("Oh, I see", "oh i see"),  # an exclamation stays a word
        ("I have a dog", "i have a dog"),
        ("one and two", "1 and 2"),
        ("my PIN is 4 7 one one", "my pin is 4 7 1 1"),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


def test_digit_string_is_the_entity() -> None:
    assert digit_string(normalise("account four seven, 11")) == "4711"
    assert digit_string(normalise("no digits here")) == ""


# -- scoring --------------------------------------------------------------------------------


def test_score_clip_counts_each_kind_of_error() -> None:
    # ref 1 2 3 4 / hyp 1 9 3 4 5: one substitution (2->9), one insertion (5): 2 errors / 4
    score = score_clip("1 2 3 4", "1 9 3 4 5")
    assert (score.substitutions, score.deletions, score.insertions) == (1, 0, 1)
    assert score.word_errors == 2 and score.ref_words == 4
    # characters: "1 2 3 4" (7) vs "1 9 3 4 5" (9): one substitution, two insertions (" 5")
    assert score.ref_chars == 7 and score.char_errors == 3
    assert score.entity_ok is False


def test_score_clip_empty_hypothesis_is_all_deleted() -> None:
    score = score_clip("yes please", "")
    assert (score.deletions, score.word_errors, score.ref_words) == (2, 2, 2)
    assert score.entity_ok is None  # no digits in the reference: no entity to get right


def test_score_clip_refuses_an_empty_reference() -> None:
    with pytest.raises(ValueError, match="empty reference"):
        score_clip("  ", "anything")


def test_corpus_wer_weighs_words_not_clips() -> None:
    # a one-word clip wrong (1/1) and a nine-word clip right (0/9): corpus WER 1/10, not 50 %
    scores = [score_clip("yes", "no"), score_clip("1 2 3 4 5 6 7 8 9", "1 2 3 4 5 6 7 8 9")]
    summary = summarise(scores)
    assert summary.wer.value == pytest.approx(0.1)
    assert summary.entity_clips == 1 and summary.entity_accuracy.value == 1.0
    assert summary.clips == 2 and summary.ref_words == 10


def test_bootstrap_interval_brackets_the_value_and_is_reproducible() -> None:
    rng = np.random.default_rng(7)
    scores = [score_clip("1 2 3", "1 2 3" if rng.random() < 0.7 else "1 5 3") for _ in range(200)]
    first, again = summarise(scores, seed=1), summarise(scores, seed=1)
    assert first == again
    wer = first.wer
    assert wer.low < wer.value < wer.high
    # WER = (share of wrong clips) / 3; its binomial standard error over 3: the interval is
    # about +- 2 SE wide
    p = sum(s.word_errors for s in scores) / len(scores)
    se = math.sqrt(p * (1 - p) / len(scores)) / 3
    assert wer.high - wer.low == pytest.approx(4 * se, rel=0.35)


def test_perfect_cohort_has_a_zero_width_interval() -> None:
    summary = summarise([score_clip("4 2", "4 2")] * 10)
    assert (summary.wer.value, summary.wer.low, summary.wer.high) == (0.0, 0.0, 0.0)
    assert summary.entity_accuracy.value == 1.0


# -- the channel ----------------------------------------------------------------------------


def _sine(seconds: float, rate: int, amplitude: float = 8000.0, hz: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * math.pi * hz * t)).astype("<i2").tobytes()


def _snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    noise = noisy.astype(np.float64) - clean.astype(np.float64)
    return 10 * math.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_g711_round_trip_keeps_a_tone_and_resamples_to_8k(codec: str) -> None:
    pcm = _sine(1.0, 16000)
    out = simulate(pcm, 16000, Channel(codec=codec), np.random.default_rng(0))
    assert len(out) == 2 * 8000  # one second at 8 kHz
    reference = np.frombuffer(simulate(pcm, 16000, Channel(codec=codec, loss=0.0), None), "<i2")
    assert np.array_equal(np.frombuffer(out, "<i2"), reference)  # no randomness without noise
    clean = np.frombuffer(_sine(1.0, 8000), "<i2")
    # G.711 quantisation keeps about 35 dB SNR; a broken law or rate would not come close
    assert _snr_db(clean[200:-200], np.frombuffer(out, "<i2")[200:-200]) > 25


@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_noise_is_added_at_the_asked_snr(snr: float) -> None:
    pcm = _sine(2.0, 8000)
    noisy = add_noise(pcm, snr, white_noise, np.random.default_rng(1))
    assert _snr_db(np.frombuffer(pcm, "<i2"), np.frombuffer(noisy, "<i2")) == pytest.approx(
        snr, abs=0.3
    )


def test_snr_is_against_active_speech_not_the_leading_silence() -> None:
    speech = _sine(1.0, 8000)
    padded = bytes(2 * 8000 * 3) + speech  # 3 s of silence, then 1 s of tone
    samples = np.frombuffer(padded, "<i2")
    assert active_power(samples) == pytest.approx(active_power(np.frombuffer(speech, "<i2")))
    noisy = np.frombuffer(add_noise(padded, 10.0, white_noise, np.random.default_rng(2)), "<i2")
    assert _snr_db(samples[-8000:], noisy[-8000:]) == pytest.approx(10.0, abs=0.3)


def test_babble_mixes_other_clips_at_equal_level() -> None:
    clips = [
        _sine(0.5, 8000, amplitude=a, hz=h) for a, h in ((1000, 300), (9000, 500), (3000, 700))
    ]
    babble = Babble([lambda c=c: c for c in clips], talkers=3)
    mix = babble(4000, np.random.default_rng(3))
    spectrum = np.abs(np.fft.rfft(mix))
    bins = [spectrum[int(h * 4000 / 8000)] for h in (300, 500, 700)]
    assert max(bins) / min(bins) < 1.1  # each talker normalised: 9x louder clip, same level
    with pytest.raises(ChannelError, match="at least 2"):
        Babble([lambda: clips[0]])


def test_loss_model_has_the_asked_rate_and_burst_length() -> None:
    channel = Channel(loss=0.1, burst_frames=3.0)
    lost = loss_mask(160 * 200_000, channel, np.random.default_rng(4))
    assert lost.mean() == pytest.approx(0.1, abs=0.01)
    starts = np.flatnonzero(lost[1:] & ~lost[:-1]).size + int(lost[0])
    assert lost.sum() / starts == pytest.approx(3.0, rel=0.05)


def test_concealment_repeats_the_last_good_frame_and_fades_out() -> None:
    frames = [np.full(160, 1000 * (i + 1), dtype="<i2") for i in range(10)]
    lost = np.array([False, True, True, False, True, True, True, True, True, True])
    out = np.frombuffer(conceal(b"".join(f.tobytes() for f in frames), lost), "<i2")
    out = out.reshape(10, 160)[:, 0].tolist()
    # frame 1 = frame 0, frame 2 = frame 0 at 80 %; frame 3 received; then 4000 fading by 20 %
    assert out == [1000, 1000, 800, 4000, 4000, 3200, 2400, 1600, 800, 0]


def test_channel_settings_are_checked() -> None:
    with pytest.raises(ChannelError, match="unsupported codec"):
        Channel(codec="G729")
    with pytest.raises(ChannelError, match="packet loss"):
        Channel(loss=1.0)
    with pytest.raises(ChannelError, match="WAV file"):
        Channel(snr_db=10, noise="/no/such/noise.wav")
    assert Channel(codec="alaw", snr_db=10, noise="babble", loss=0.02).label == (
        "PCMA 10dB babble loss 2%"
    )


# -- manifests ------------------------------------------------------------------------------


def _wav(path: Path, pcm: bytes, rate: int = 8000, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return path


def test_manifest_loads_clips_tags_and_a_content_hash(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav", _sine(0.3, 8000))
    _wav(tmp_path / "b.wav", _sine(0.4, 16000, hz=300), rate=16000)
    rows = [
        {"audio": "a.wav", "text": "one", "speaker": "x", "sample_rate": 8000},
        {"audio": "b.wav", "text": "two", "speaker": "y", "gender": "female"},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    manifest = load_manifest(path)
    assert [c.name for c in manifest.clips] == ["a.wav", "b.wav"]
    assert manifest.clips[1].tags == {"speaker": "y", "gender": "female"}
    assert manifest.clips[1].sample_rate == 16000
    assert manifest.clips[1].duration_s == pytest.approx(0.4)
    assert manifest.tag_names == ("speaker", "gender")
    before = manifest.content_sha256
    _wav(tmp_path / "b.wav", _sine(0.4, 16000, hz=310), rate=16000)  # same names, new audio
    assert load_manifest(path).content_sha256 != before
    assert load_manifest(path).manifest_sha256 == manifest.manifest_sha256


def test_manifest_problems_are_all_reported_with_their_lines(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav", _sine(0.3, 8000))
    _wav(tmp_path / "copy.wav", _sine(0.3, 8000))
    _wav(tmp_path / "stereo.wav", _sine(0.3, 8000) * 2, channels=2)
    _wav(tmp_path / "low.wav", _sine(0.3, 4000), rate=4000)
    (tmp_path / "junk.wav").write_bytes(b"not a wave file")
    lines = [
        '{"audio": "a.wav", "text": "one"}',
        '{"audio": "missing.wav", "text": "two"}',
        '{"audio": "a.wav", "text": "one again"}',
        '{"audio": "copy.wav", "text": "one"}',
        '{"audio": "stereo.wav", "text": "three"}',
        '{"audio": "low.wav", "text": "four"}',
        '{"audio": "junk.wav", "text": "five"}',
        '{"audio": "a.wav", "text": ""}',
        '{"audio": "a.wav", "text": "six", "sample_rate": 16000}',
        "{not json",
        '["a list"]',
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    message = str(caught.value)
    for expected in (
        "10 problem(s)",
        "line 2: missing.wav: No such file",
        "line 3: duplicate entry for a.wav (first at line 1)",
        "line 4: copy.wav has the same audio as line 1",
        "line 5: stereo.wav: 2 channel(s)",
        "line 6: low.wav: 4000 Hz is below",
        "line 7: junk.wav: not a PCM WAV file",
        "line 8: a.wav: empty reference",
        "line 9: a.wav: the manifest says 16000 Hz, the file 8000",
        "line 10: not JSON",
        "line 11: expected a JSON object",
    ):
        assert expected in message


def test_csv_manifest_and_its_header(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav", _sine(0.3, 8000))
    good = tmp_path / "good.csv"
    good.write_text("audio,text,accent\na.wav,hello there,USA\n")
    assert load_manifest(good).clips[0].tags == {"accent": "USA"}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,transcript\na.wav,hello\n")
    with pytest.raises(ManifestError, match="header lacks audio, text"):
        load_manifest(bad)


# -- the gate -------------------------------------------------------------------------------


def _result(wers: dict[str, tuple[float, int]], content: str = "abc") -> dict:
    return {
        "meta": {"manifest": {"content_sha256": content}, "plan": {"sample": None}},
        "scores": [
            {
                "engine": "pocketsphinx",
                "grammar": "digits",
                "channel": "PCMU clean",
                "cohort": cohort,
                "clips": clips,
                "wer": {"value": wer, "low": None, "high": None},
            }
            for cohort, (wer, clips) in wers.items()
        ],
    }


def test_gate_flags_a_cohort_that_worsened_beyond_the_threshold() -> None:
    baseline = _result({"all": (0.200, 400), "speaker=a": (0.100, 100), "speaker=b": (0.3, 10)})
    current = _result({"all": (0.204, 400), "speaker=a": (0.106, 100), "speaker=b": (0.9, 10)})
    verdict = compare(current, baseline, max_regression=0.5)
    # all: +0.4 points (allowed); a: +0.6 points (regression); b: 10 clips, not gated
    assert [r.cohort for r in verdict.regressions] == ["speaker=a"]
    assert [c.cohort for c in verdict.compared] == ["all", "speaker=a"]
    assert "+0.60 points" in verdict.regressions[0].describe()
    assert compare(current, baseline, max_regression=1.0).passed
    assert not compare(current, baseline, max_regression=1.0, min_clips=5).passed


def test_gate_refuses_a_baseline_of_other_data() -> None:
    with pytest.raises(BaselineError, match="other data"):
        compare(_result({"all": (0.1, 50)}), _result({"all": (0.1, 50)}, content="xyz"), 0.5)
    with pytest.raises(BaselineError, match="not a `switchboard eval asr --json` result"):
        compare(_result({"all": (0.1, 50)}), {"something": "else"}, 0.5)


# -- the command, with PocketSphinx on FSDD --------------------------------------------------


@pytest.fixture
def fsdd_manifest_file(shared_data: Path, tmp_path: Path) -> Path:
    """12 FSDD clips (3 per speaker), by absolute path: the data stays in ../shared."""
    fsdd = shared_data / "fsdd"
    rows = [json.loads(line) for line in (fsdd / "manifest.jsonl").read_text().splitlines()]
    chosen = []
    for speaker in ("jackson", "nicolas", "george", "yweweler"):
        chosen += [r for r in rows if r["speaker"] == speaker and r["audio"].endswith("_7.wav")][:3]
    path = tmp_path / "fsdd12.jsonl"
    path.write_text(
        "".join(json.dumps({**r, "audio": str(fsdd / r["audio"])}) + "\n" for r in chosen)
    )
    return path


def test_eval_asr_command_reports_per_cohort_and_gates(
    fsdd_manifest_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "result.json"
    html = tmp_path / "report.html"
    args = ["eval", "asr", str(fsdd_manifest_file), "--engine", "pocketsphinx"]
    channel_args = ["--grammar", "digits", "--codec", "pcmu", "--codec", "pcma"]
    code = main([*args, *channel_args, "--quiet", "--json", str(out), "--html", str(html)])
    assert code == 0
    result = json.loads(out.read_text())
    meta = result["meta"]
    assert meta["manifest"]["clips"] == 12 and len(meta["manifest"]["content_sha256"]) == 64
    assert meta["engines"]["pocketsphinx"]["version"]
    assert [c["label"] for c in meta["plan"]["channels"]] == ["PCMU clean", "PCMA clean"]
    assert meta["cohort_tags"] == ["speaker"]  # accent splits the clips as speaker does
    cohorts = {(s["channel"], s["cohort"]): s for s in result["scores"]}
    assert set(cohorts) == {
        (channel, cohort)
        for channel in ("PCMU clean", "PCMA clean")
        for cohort in (
            "all",
            *(f"speaker={s}" for s in ("george", "jackson", "nicolas", "yweweler")),
        )
    }
    overall = cohorts[("PCMU clean", "all")]
    assert overall["clips"] == 12 and overall["entity_clips"] == 12
    # the corpus figure is the clips' errors over their words, from the per-clip detail
    detail = [c for c in result["clips"] if c["channel"] == "PCMU clean"]
    assert overall["wer"]["value"] == pytest.approx(
        sum(c["word_errors"] for c in detail) / sum(c["ref_words"] for c in detail), abs=1e-6
    )
    # seven, said by four speakers: PocketSphinx's digits grammar gets most of them
    assert overall["entity_accuracy"]["value"] >= 0.5
    assert len(result["speed"]) == 2 and result["speed"][0]["latency_p50_ms"] > 0
    page = html.read_text()
    assert page.count("<svg") == 3 and "WER by cohort, PCMA clean" in page

    # the gate: the run against itself passes; against a better baseline it fails
    again = tmp_path / "again.json"
    gate_args = ["--baseline", str(out), "--min-clips", "3", "--json", str(again)]
    assert main([*args, *channel_args, "--quiet", *gate_args]) == 0
    assert json.loads(again.read_text())["scores"] == result["scores"]  # same seed, same audio
    better = json.loads(out.read_text())
    for row in better["scores"]:
        row["wer"]["value"] = max(0.0, row["wer"]["value"] - 0.01)
    better_file = tmp_path / "better.json"
    better_file.write_text(json.dumps(better))
    capsys.readouterr()
    gated = ["--quiet", "--baseline", str(better_file), "--min-clips", "12"]
    assert main([*args, *channel_args, *gated]) == 1
    assert "REGRESSION pocketsphinx/digits PCMU clean all (12 clips)" in capsys.readouterr().err


def test_eval_asr_refuses_bad_input_before_recognising(
    fsdd_manifest_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"audio": "nowhere.wav", "text": "one"}\n')
    assert main(["eval", "asr", str(missing), "--quiet"]) == 2
    assert "nowhere.wav" in capsys.readouterr().err
    manifest = str(fsdd_manifest_file)
    assert main(["eval", "asr", manifest, "--grammar", "klingon", "--quiet"]) == 2
    assert "grammar 'klingon'" in capsys.readouterr().err
    assert main(["eval", "asr", manifest, "--snr", "loud", "--quiet"]) == 2
    assert "'clean' or a number" in capsys.readouterr().err
    assert main(["eval", "asr", manifest, "--cohort", "height", "--quiet"]) == 2
    assert "not a tag of the manifest" in capsys.readouterr().err
    models = tmp_path / "models"
    config = tmp_path / "c.toml"
    config.write_text(f'[models]\ndir = "{models}"\n')
    assert main(["eval", "asr", manifest, "--config", str(config), "--engine", "vosk"]) == 2
    assert "asr engine vosk" in capsys.readouterr().err


BASELINE = Path(__file__).parent / "baselines" / "fsdd_pocketsphinx_digits.json"
"""PocketSphinx's digits grammar on 400 FSDD clips (seed 0), PCMU: the gate this suite keeps.
After a deliberate change of engine or settings, write it anew with the command in its meta."""


def test_pocketsphinx_digits_hold_their_baseline(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = shared_data / "fsdd" / "manifest.jsonl"
    args = ["eval", "asr", str(manifest), "--engine", "pocketsphinx", "--grammar", "digits"]
    gate = ["--baseline", str(BASELINE), "--max-regression", "0.5", "--min-clips", "80"]
    assert main([*args, "--sample", "400", "--quiet", *gate]) == 0
    err = capsys.readouterr().err
    assert "5 cohort figures compared" in err and "0 worse" in err


def test_digit_strings_are_one_speakers_clips_with_pauses(
    tmp_path: Path, shared_data: Path
) -> None:
    import wave as wav_module

    from app.asr.numbers import spoken_digits
    from app.eval.digit_strings import Spec, build

    manifest = build(shared_data / "fsdd", tmp_path, Spec(count=8, min_digits=4, max_digits=6))
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 8 and {r["speaker"] for r in rows} == {
        "george", "jackson", "nicolas", "yweweler"
    }  # fmt: skip
    for row in rows:
        digits = row["audio"].split("_")[2].removesuffix(".wav")
        assert spoken_digits(row["text"]) == digits and 4 <= len(digits) <= 6
        assert row["length"] == str(len(digits))
        with wav_module.open(str(tmp_path / row["audio"])) as audio:
            assert audio.getframerate() == 8000
            # each FSDD clip is 0.2-0.8 s, each pause 0.2-0.6 s
            assert 0.2 * len(digits) < audio.getnframes() / 8000 < 1.5 * len(digits) + 0.6
    assert build(shared_data / "fsdd", tmp_path / "again", Spec(count=8, min_digits=4,
                 max_digits=6)).read_text() == manifest.read_text()  # fmt: skip  # seeded
