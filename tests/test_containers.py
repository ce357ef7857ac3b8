"""The Dockerfile and docker-compose.yml, checked without a Docker engine: parsed, compared
with the server's configuration, and their health checks run against the real server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from app.config import Config, ServerConfig, SipConfig, load_config
from tests.server_process import ServerProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def bridge_alternative() -> dict:
    """The commented bridge-network block of docker-compose.yml, uncommented and parsed."""
    text = COMPOSE.read_text()
    found = re.search(r"^# >>> bridge\n(.*?)^# <<< bridge$", text, re.MULTILINE | re.DOTALL)
    assert found, "bridge alternative block missing"
    block = "\n".join(line.removeprefix("#") for line in found[1].splitlines())
    return yaml.safe_load(block)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def instruction(name: str) -> list[str]:
    return [args for kind, args in dockerfile_instructions() if kind == name]


def config_of(environment: dict[str, str]) -> Config:
    """The server configuration these environment variables give (they must all be valid)."""
    return load_config(None, {k: str(v) for k, v in environment.items()})


# -- docker-compose.yml ------------------------------------------------------------------------


def test_compose_services_health_and_order() -> None:
    services = compose()["services"]
    assert set(services) == {"switchboard", "postgres", "redis"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    switchboard = services["switchboard"]
    assert switchboard["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert any("/readyz" in part for part in switchboard["healthcheck"]["test"])
    grace = int(switchboard["stop_grace_period"].removesuffix("s"))
    assert grace > ServerConfig().drain_timeout_s  # SIGTERM drains: give it the time
    assert switchboard["network_mode"] == "host"


def test_compose_volumes() -> None:
    """Models, dialplans and SIP config read-only; the data dir on a named volume."""
    document = compose()
    volumes = document["services"]["switchboard"]["volumes"]
    for folder in ("models", "dialplans", "sip_config"):
        assert f"./{folder}:/opt/switchboard/{folder}:ro" in volumes
    data = [v for v in volumes if v.endswith(":/var/lib/switchboard")]
    assert len(data) == 1
    assert data[0].split(":")[0] in document["volumes"]


def test_compose_environment_is_valid_config() -> None:
    environment = compose()["services"]["switchboard"]["environment"]
    config = config_of({k: v for k, v in environment.items() if k.startswith("SWITCHBOARD_")})
    assert config.server.log_format == "json"
    assert config.store.url.startswith("postgresql+psycopg://")
    assert config.state.url.startswith("redis://")


def test_bridge_alternative_publishes_the_rtp_range() -> None:
    """The published RTP range is exactly the server's rtp_port .. rtp_port + count - 1, one to
    one (the port inside is the one written into the SDP), and callers get a public address."""
    block = bridge_alternative()
    config = config_of(
        {k: v for k, v in block["environment"].items() if k.startswith("SWITCHBOARD_")}
    )
    sip = config.sip
    assert sip.public_address
    assert config.http.bind == "0.0.0.0"
    first, last = sip.rtp_port, sip.rtp_port + sip.rtp_port_count - 1
    assert f"{first}-{last}:{first}-{last}/udp" in block["ports"]
    assert {"5060:5060/udp", "5060:5060/tcp"} <= set(block["ports"])
    assert "postgres:5432" in config.store.url and "redis:6379" in config.state.url


# -- Dockerfile -----------------------------------------------------------------------------------


def test_dockerfile_runs_as_non_root_with_espeak() -> None:
    (user,) = instruction("USER")
    assert user.split(":")[0] not in ("root", "0")
    runs = " ".join(instruction("RUN"))
    assert f"--uid {user.split(':')[0]}" in runs  # the uid is the user created for it
    assert "espeak-ng" in runs
    assert "pip install ." in runs
    assert instruction("CMD") == ['["switchboard", "serve"]']


def test_dockerfile_exposes_sip_http_and_the_rtp_range() -> None:
    exposed = " ".join(instruction("EXPOSE")).split()
    sip = SipConfig()
    rtp = f"{sip.rtp_port}-{sip.rtp_port + sip.rtp_port_count - 1}/udp"
    assert {"5060/udp", "5060/tcp", "5061/tcp", "9300/tcp", rtp} <= set(exposed)


def exec_form(args: str) -> list[str]:
    """The JSON array of a HEALTHCHECK ... CMD [...] instruction."""
    return json.loads(args[args.index("CMD") + 3 :].strip())


def test_health_checks_probe_the_real_server(tmp_path: Path) -> None:
    """The image's HEALTHCHECK (/livez) and compose's (/readyz), run as written (with this
    venv's python) against `switchboard serve`: healthy while it runs, failing once it is
    gone. SWITCHBOARD_HTTP__PORT points them at the test server's port."""
    (healthcheck,) = instruction("HEALTHCHECK")
    image_check = exec_form(healthcheck)
    compose_check = compose()["services"]["switchboard"]["healthcheck"]["test"][1:]
    assert "/livez" in image_check[-1] and "/readyz" in compose_check[-1]
    checks = [image_check, compose_check]
    server = ServerProcess.start({}, tmp_path / "data")
    env = {"SWITCHBOARD_HTTP__PORT": str(server.http_port), "PATH": "/usr/bin:/bin"}

    def run(check: list[str]) -> int:
        assert check[0] == "python"
        command = [sys.executable, *check[1:]]
        return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode

    try:
        codes = [run(check) for check in checks]
    finally:
        assert server.stop() == 0, server.log
    assert codes == [0, 0], server.log
    assert [run(check) for check in checks] == [1, 1]


def test_compose_keeps_secrets_out() -> None:
    """Only the demo database password is written out; API keys come from the environment."""
    text = COMPOSE.read_text()
    assert re.search(r"OPENAI_API_KEY: \$\{OPENAI_API_KEY:-\}", text)
    assert "sk-" not in text
