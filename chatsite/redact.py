"""Keep credentials out of logs and error pages.

Connection URLs carry their passwords (``redis://:pw@host``, ``?sentinel_password=pw``), so a
URL is never printed as given: ``redact_url`` keeps only what an operator needs to recognise it
(scheme, hosts, path) and replaces user information and the whole query. The exception reporter
filter applies the same rule to the settings and local variables of Django's error page and
error mails, whatever the setting or variable is called.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from django.views.debug import SafeExceptionReporterFilter

HIDDEN = "***"
# scheme://userinfo@ ... up to whitespace or a quote: what a URL inside a repr looks like.
_URL_IN_TEXT = re.compile(r"\b([a-z][a-z0-9+.-]*)://([^\s'\"<>@/]*@)?([^\s'\"<>]*)", re.I)


def redact_url(url: str) -> str:
    """``redis://user:pw@h:6379/0?sentinel_password=x`` -> ``redis://***@h:6379/0?***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return HIDDEN
    if not parts.scheme:
        return HIDDEN if url else url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{HIDDEN}@{netloc.rsplit('@', 1)[1]}"
    query = f"?{HIDDEN}" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


def redact_text(text: str) -> str:
    """Every URL inside ``text`` redacted (for reprs and messages that embed one)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


class _Shown:
    """A value as the error page will show it (its repr, already redacted)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class RedactingExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's filter, plus: settings named like a connection URL are hidden whole, and any
    URL in any other setting or local variable loses its credentials and query."""

    hidden_settings = re.compile(
        "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|REDIS_URL|DATABASE_URL|DSN", re.I
    )

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        if isinstance(cleansed, str):
            return redact_text(cleansed)
        return cleansed

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> Any:
        variables = super().get_traceback_frame_variables(request, tb_frame)
        shown = []
        for name, value in variables:
            try:
                text = repr(value)
            except Exception:  # a repr that fails: Django would show the failure, so do we
                shown.append((name, value))
                continue
            redacted = redact_text(text)
            shown.append((name, value if redacted == text else _Shown(redacted)))
        return shown
