# One image for every process of a gcfl deployment: the SuperLink (which runs
# the ServerApp), the SuperNodes (which run the ClientApps and gcfl's warm
# training worker) and `flwr` itself.
# Build: docker build -t gcfl:latest .   (or `docker compose build`)
# Any Debian-like base with Python 3.11 and its venv module works
# (python:3.11-slim, or Debian bookworm's python3 + python3-venv): gcfl goes
# into a venv, so no base needs pip to write into its system Python (PEP 668).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/gcfl \
    PATH=/opt/gcfl/bin:$PATH \
    # The image already holds every dependency; Flower must not install more at run time.
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

RUN python3 -m venv /opt/gcfl
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gcfl ./gcfl
RUN pip install . && mkdir -p /results /state

# No default command: docker-compose.yml gives each service its own.
