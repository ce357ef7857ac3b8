# Switchboard in a container: docker-compose.yml runs it with PostgreSQL and Redis, and explains
# the networking (SIP and RTP want the host's network). Build: docker build -t switchboard .
FROM python:3.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# espeak-ng: the default TTS engine runs it per utterance.
RUN apt-get update && apt-get install -y --no-install-recommends espeak-ng \
    && rm -rf /var/lib/apt/lists/*

# A fixed, non-root uid/gid, so volume ownership is predictable on the host and policies that
# require a numeric USER accept the image.
RUN groupadd --system --gid 10001 switchboard \
    && useradd --system --uid 10001 --gid switchboard --home-dir /var/lib/switchboard \
        --shell /usr/sbin/nologin switchboard \
    && install -d -o switchboard -g switchboard -m 0750 /var/lib/switchboard

# Installed as root: the code, dialplans and config stay read-only to the server.
WORKDIR /opt/switchboard
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install . && switchboard --version
COPY dialplans ./dialplans
COPY sip_config ./sip_config

# Without --config the embedded defaults apply and relative paths resolve against
# /opt/switchboard (dialplans/, sip_config/, models/: mount your own read-only). What the
# server writes (spool, recordings, SQLite, health and pid files) goes to the data volume.
ENV SWITCHBOARD_SERVER__DATA_DIR=/var/lib/switchboard \
    SWITCHBOARD_STORE__URL=sqlite:////var/lib/switchboard/switchboard.db
VOLUME ["/var/lib/switchboard"]

# SIP (UDP, TCP, TLS when sip.tls_port = 5061), metrics and health, and RTP: the default
# range sip.rtp_port = 10000, sip.rtp_port_count = 1000 (two ports per call).
EXPOSE 5060/udp 5060/tcp 5061/tcp 9300/tcp 10000-10999/udp

USER 10001:10001

# /livez: the SIP and main loops are turning. The HTTP listener binds 127.0.0.1 by default,
# which is enough here: the check runs inside the container. No curl in slim images.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('SWITCHBOARD_HTTP__PORT', '9300'), timeout=4)"]

# SIGTERM drains: calls in progress get [server] drain_timeout_s (60 s) to end, so give
# `docker stop` at least that long (--time=90; compose: stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["switchboard", "serve"]
