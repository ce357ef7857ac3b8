"""The `switchboard` command: exit codes and what operators read."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from app.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_invalid_config_exits_2_naming_the_key(tmp_path, capsys):
    config = tmp_path / "switchboard.toml"
    config.write_text("[sip]\nudp_port = 'abc'\n")
    assert main(["config", "check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("switchboard: config error: sip.udp_port: expected an integer")


def test_invalid_environment_override_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_VAD__AGGRESSIVENESS", "9")
    assert main(["serve"]) == 2  # fails before app.server is imported
    assert "vad.aggressiveness: must be 0..3" in capsys.readouterr().err


def test_python_dash_m_app_reports_config_errors(tmp_path):
    config = tmp_path / "switchboard.toml"
    config.write_text("[sip]\nudpport = 5060\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    proc = subprocess.run(
        [sys.executable, "-m", "app", "config", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "switchboard: config error: unknown key 'sip.udpport'" in proc.stderr
    assert "did you mean 'sip.udp_port'?" in proc.stderr


def test_config_check_prints_effective_config(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SWITCHBOARD_SIP__UDP_PORT", raising=False)
    monkeypatch.setenv("SWITCHBOARD_SIP__MAX_CALLS", "7")
    config = tmp_path / "switchboard.toml"
    config.write_text(
        f'[sip]\nroutes = "{REPO_ROOT}/sip_config/routes.toml"\n'
        f'[dialplans]\ndir = "{REPO_ROOT}/dialplans"\n'
    )
    assert main(["config", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "[sip]\n" in out and "max_calls = 7\n" in out
    assert f'url = "sqlite:///{tmp_path.resolve()}/var/switchboard.db"' in out
    plans = len(list((REPO_ROOT / "dialplans").glob("*.yaml")))
    assert f"# OK: {plans} dialplan(s), 2 route(s)" in out


def test_config_check_reports_broken_routes(tmp_path, capsys):
    (tmp_path / "dialplans").mkdir()
    (tmp_path / "dialplans" / "demo.yaml").write_text(
        (REPO_ROOT / "dialplans" / "demo.yaml").read_text()
    )
    (tmp_path / "routes.toml").write_text('[[route]]\nnumber = "1"\ndialplan = "nope"\n')
    config = tmp_path / "switchboard.toml"
    config.write_text('[sip]\nroutes = "routes.toml"\n')
    assert main(["config", "check", "--config", str(config)]) == 1
    assert "unknown dialplan 'nope'" in capsys.readouterr().err


def test_dialplan_validate(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("start: a\nsteps:\n  a:\n    say: hi\n    next: b\n")
    demo = REPO_ROOT / "dialplans" / "demo.yaml"
    assert main(["dialplan", "validate", str(demo), str(bad)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"OK {demo}", f"{bad}:5:11: step 'a': next: unknown step 'b'"]
    assert main(["dialplan", "validate", str(REPO_ROOT / "dialplans")]) == 0
    examples = sorted((REPO_ROOT / "dialplans").glob("*.yaml"))
    assert capsys.readouterr().out == "".join(f"OK {path}\n" for path in examples)


def test_dialplan_simulate_runs_the_call_engine(tmp_path, capsys, monkeypatch):
    """Typed speech and #keys drive the same runner as calls; the transcript shows each step."""
    monkeypatch.setattr("sys.stdin", io.StringIO("#0\n"))
    assert main(["dialplan", "simulate", str(REPO_ROOT / "dialplans" / "bank.yaml"),
                 "--transfer-fails"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "-> step ask_account" in out
    assert "caller (speech or #keys)> #0" in out
    assert "-> step to_agent" in out
    assert "[transfer to sip:agents@127.0.0.1:5080 fails (--transfer-fails)]" in out
    assert "-> step agent_unavailable" in out
    assert out.rstrip().splitlines()[-2] == "bot hangs up (hangup step)"


def test_dialplan_simulate_refuses_a_broken_file(capsys):
    broken = REPO_ROOT / "tests" / "dialplans" / "broken" / "unreachable.yaml"
    assert main(["dialplan", "simulate", str(broken)]) == 1
    assert "can never be reached" in capsys.readouterr().err


def test_dialplan_schema_is_printed(capsys):
    assert main(["dialplan", "schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Switchboard dialplan"


def test_dialplan_reload_without_a_server_says_so(tmp_path, capsys):
    config = tmp_path / "switchboard.toml"
    config.write_text(f'[dialplans]\ndir = "{REPO_ROOT / "dialplans"}"\n')
    assert main(["dialplan", "reload", "--config", str(config)]) == 1
    assert "no running server found" in capsys.readouterr().err
