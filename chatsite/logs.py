"""Log lines: plain text for a terminal, JSON lines (``CHAT_LOG_JSON=1``) for a collector.

Every record gets ``node`` (this node's name) and, where the code runs for one socket or one
request, ``conn`` (a short random id per connection) and ``room``: they come from a context
variable that the access log (``chatsite/access_log.py``) and the consumer bind, so a line
written deep in a service call still says whose it is. Cluster events carry their own fields
(``event``, ``room``, ``peer``...) through ``extra=``.

JSON lines are python-json-logger's: one object per line with ``time``, ``level``, ``logger``,
``message`` and every field above.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("chat_log_context")

# Fields a record may carry from the context; the rest of the context is ignored.
CONTEXT_FIELDS = ("conn", "room")


def bind(**fields: str) -> None:
    """Add fields to the current context (this task and the tasks it starts from now on)."""
    _context.set({**_context.get({}), **fields})


def bound() -> dict[str, str]:
    return dict(_context.get({}))


def node_name() -> str:
    from django.conf import settings

    return str(getattr(settings, "CHAT_NODE_NAME", ""))


class ContextFilter(logging.Filter):
    """Adds ``node`` and the bound connection fields to each record (a handler's filter, so
    records of every logger get them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node"):
            record.node = node_name()
        for key, value in _context.get({}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class QuietProbes(logging.Filter):
    """Drops Django's error line for a probe's 503: a node that is starting or draining
    answers ``/readyz`` 503 by design, and the access log already has the request."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        return getattr(request, "path", None) not in PROBE_PATHS


PROBE_PATHS = frozenset({"/healthz", "/readyz"})


def logging_config(*, json_lines: bool, level: str) -> dict[str, Any]:
    """Django's LOGGING: the chat's loggers at ``level``, everything else at WARNING."""
    formatters: dict[str, Any] = {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            "json_ensure_ascii": False,
        },
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": "chatsite.logs.ContextFilter"},
            "quiet_probes": {"()": "chatsite.logs.QuietProbes"},
        },
        "formatters": formatters,
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json" if json_lines else "plain",
                "filters": ["context"],
            }
        },
        "root": {"handlers": ["console"], "level": "WARNING"},
        "loggers": {
            # Django's own handler (DEBUG only) would print each of its lines a second time.
            "django": {"handlers": [], "level": "WARNING", "propagate": True},
            "django.request": {"filters": ["quiet_probes"]},
            "cluster": {"level": level},
            "rooms": {"level": level},
            "chatsite": {"level": level},
        },
    }
