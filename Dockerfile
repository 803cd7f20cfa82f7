# One image for every process of a gcfl deployment: the SuperLink (which runs
# the ServerApp), the SuperNodes (which run the ClientApps) and `flwr` itself.
# Build: docker build -t gcfl:latest .   (or `docker compose build`)
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The image already holds every dependency; Flower must not install more at run time.
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gcfl ./gcfl
RUN pip install . && mkdir -p /results /state

# No default command: docker-compose.yml gives each service its own.
