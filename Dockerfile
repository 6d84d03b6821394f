# syntax=docker/dockerfile:1
#
# aoe in a container: `aoe serve` on port 8000 by default; any other command
# works too (`docker run --rm aoe:latest run /app/workflows/competitor-brief.yaml --mock`).
#
#   docker build -t aoe:latest .
#   docker run -d --name aoe -p 127.0.0.1:8000:8000 \
#     -e AOE_API_TOKEN="$(openssl rand -hex 32)" -e OPENAI_API_KEY -e ANTHROPIC_API_KEY \
#     -v aoe-state:/var/lib/aoe aoe:latest
#
# AOE_API_TOKEN is required by the default command: in a container aoe serve
# binds 0.0.0.0, and it refuses any address beyond loopback without a bearer
# token (it exits 2, saying so). Never bake the token or API keys into the
# image: pass them at run time (-e, --env-file, a Kubernetes Secret).
#
# The run store lives in /var/lib/aoe (AOE_STATE_DIR): mount a volume there,
# or records (and `aoe resume`) go with the container.
# docs/deployment.md is the full guide.

# -- build: aoe and every dependency as wheels ------------------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md CHANGELOG.md ./
COPY aoe ./aoe
RUN pip wheel --wheel-dir /wheels .

# -- runtime: the wheels installed, no build tools, no source tree ----------------------
FROM python:3.11-slim

LABEL org.opencontainers.image.title="aoe" \
      org.opencontainers.image.description="Agent Orchestration Engine: declarative YAML workflows of LLM calls" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AOE_STATE_DIR=/var/lib/aoe \
    AOE_CONFIG=/app/config/production.yaml

# uid/gid 10001: above any host's system and login users; numeric in USER
# below so that Kubernetes can check runAsNonRoot.
RUN groupadd --system --gid 10001 aoe \
 && useradd --system --uid 10001 --gid aoe --home-dir /var/lib/aoe --no-create-home \
      --shell /usr/sbin/nologin aoe \
 && install -d -o aoe -g aoe -m 0750 /var/lib/aoe

# The wheels are mounted for this step only, so they never become a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels aoe \
 && aoe --version

WORKDIR /app
# The deployment defaults (AOE_CONFIG above; environment variables override
# them, see `aoe config show`) and the example workflows, for a first run.
COPY config/production.yaml ./config/production.yaml
COPY workflows ./workflows

USER 10001:10001
EXPOSE 8000

# Liveness only: /health/live answers 200 while the process serves at all.
# (/health turns 503 while draining or when the queue is full: that is for a
# load balancer's readiness, not a reason to restart.) slim has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=4)"]

# SIGTERM drains (no new runs, runs in progress cancelled and recorded):
# give it time, e.g. `docker stop -t 60`, stop_grace_period in compose.
STOPSIGNAL SIGTERM
ENTRYPOINT ["aoe"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
