# syntax=docker/dockerfile:1
# The chat node image: `docker build -t chat:0.1.0 .` then set the chart's image.repository/tag
# (or image.digest). docs/packaging.md explains the layers, the lock file and the pins.
#
# Two stages: "build" installs the locked dependencies, then the project, into a virtualenv and
# collects the static files; "runtime" copies only the virtualenv and the collected files into
# a slim image that runs as an unprivileged user on a read-only root filesystem.

# The base image, pinned by digest: a tag moves, a digest names one image for ever.
# NOT VERIFIED HERE: no registry could be reached when this was written. The digest below is the
# one that public Dockerfiles pin for python:3.11-slim-bookworm; check it (and re-pin when you
# take a newer Python patch release) with
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
# or `crane digest python:3.11-slim-bookworm`, then replace it here or pass
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:b18992999dbe963a45a8a4da40ac2b1975be1a776d939d098c647482bcad5cba

FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src
# Dependencies first, in their own layer, from the lock file (exact versions, hashes checked):
# a change to the source reuses this layer; only requirements.lock invalidates it.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

# Then the project itself (its dependencies are already there: --no-deps).
COPY pyproject.toml README.md manage.py ./
COPY chatsite ./chatsite
COPY rooms ./rooms
COPY cluster ./cluster
RUN pip install --no-deps . \
    && mkdir -p /app \
    && cp manage.py /app/manage.py

# Static files are collected into /app/staticfiles (CHAT_STATIC_ROOT) once, here: the running
# container cannot write to its root filesystem. Settings need no services for this.
RUN CHAT_DATA_DIR=/tmp/chat-build CHAT_STATIC_ROOT=/app/staticfiles DJANGO_DEBUG=false \
        clusterchat collectstatic --noinput --verbosity 0 \
    && rm -rf /tmp/chat-build \
    && python -m compileall -q /opt/venv /app


FROM ${PYTHON_IMAGE} AS runtime

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only (bytecode is compiled at build).
# PYTHONUNBUFFERED: log lines reach `kubectl logs` at once.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DJANGO_SETTINGS_MODULE=chatsite.settings \
    CHAT_DATA_DIR=/var/lib/chat \
    CHAT_STATIC_ROOT=/app/staticfiles

# The same uid/gid as the chart's podSecurityContext (runAsUser/runAsGroup 10001).
RUN groupadd --system --gid 10001 chat \
    && useradd --system --uid 10001 --gid chat --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin chat \
    && mkdir -p /var/lib/chat \
    && chown chat:chat /var/lib/chat

COPY --from=build /opt/venv /opt/venv
# Owned by root and not writable by the chat user: the code is immutable at run time.
# /app holds manage.py (the chart runs `python manage.py ...`) and the collected static files.
COPY --from=build /app /app

WORKDIR /app
USER 10001:10001
EXPOSE 8000

# For `docker run` and Compose (Kubernetes uses the chart's probes instead): /healthz answers
# 200 while the node's event loop runs. The slim image has no curl: Python's urllib.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]

# runnode drains on SIGTERM (the signal Kubernetes and `docker stop` send), then exits 0.
STOPSIGNAL SIGTERM
# Exec form, no shell in between: python is PID 1 and receives SIGTERM itself.
CMD ["clusterchat", "runnode", "--host", "0.0.0.0", "--port", "8000"]
