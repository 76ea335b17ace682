# syntax=docker/dockerfile:1
# The chat node image: `docker build -t chat:0.1.0 .` then set the chart's image.repository/tag.
#
# Two stages: "build" installs the project and its dependencies into a virtualenv and collects
# the static files; "runtime" copies only the virtualenv and the application into a slim image
# that runs as an unprivileged user on a read-only root filesystem.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /app
COPY . .
# The project and its dependencies (pyproject.toml). psycopg's binary wheel needs no compiler.
RUN pip install . && rm -rf build ./*.egg-info

# Static files are collected into STATIC_ROOT (/app/staticfiles) once, here: the running
# container cannot write to its root filesystem. Settings need no services for this.
RUN CHAT_DATA_DIR=/tmp/chat-build DJANGO_DEBUG=false python manage.py collectstatic --noinput \
    && rm -rf /tmp/chat-build \
    && python -m compileall -q /app /opt/venv


FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only (bytecode is compiled at build).
# PYTHONUNBUFFERED: log lines reach `kubectl logs` at once.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DJANGO_SETTINGS_MODULE=chatsite.settings \
    CHAT_DATA_DIR=/var/lib/chat

# The same uid/gid as the chart's podSecurityContext (runAsUser/runAsGroup 10001).
RUN groupadd --system --gid 10001 chat \
    && useradd --system --uid 10001 --gid chat --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin chat \
    && mkdir -p /var/lib/chat \
    && chown chat:chat /var/lib/chat

COPY --from=build /opt/venv /opt/venv
# Owned by root and not writable by the chat user: the code is immutable at run time.
COPY --from=build /app /app

WORKDIR /app
USER 10001:10001
EXPOSE 8000

# runnode drains on SIGTERM (the signal Kubernetes and `docker stop` send), then exits 0.
STOPSIGNAL SIGTERM
# Exec form, no shell in between: python is PID 1 and receives SIGTERM itself.
CMD ["python", "manage.py", "runnode", "--host", "0.0.0.0", "--port", "8000"]
