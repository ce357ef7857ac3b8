FROM python:3.12-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends espeak-ng \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/switchboard
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir .
COPY dialplans ./dialplans
COPY sip_config ./sip_config
CMD ["switchboard", "serve"]
