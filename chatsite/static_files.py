"""Static files from the node itself, with WhiteNoise: hashed names, compression, long caching.

WhiteNoise is a synchronous middleware; under ASGI Django would drain its sync file iterator
into memory through a thread and warn on every file. ``StaticFilesMiddleware`` hands the ASGI
handler an asynchronous iterator instead, reading the file in chunks off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.contrib.staticfiles.storage import ManifestStaticFilesStorage, staticfiles_storage
from whitenoise.middleware import WhiteNoiseMiddleware
from whitenoise.storage import CompressedManifestStaticFilesStorage

CHUNK_BYTES = 64 * 1024


async def _chunks(stream: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(stream.read, CHUNK_BYTES):
        yield chunk


class HashedStaticFilesStorage(CompressedManifestStaticFilesStorage):
    """Content-hashed names (cacheable for ever), gzip and brotli copies, and a manifest.

    ES module imports are not rewritten (``support_js_module_import_aggregation`` stays off):
    Django's rewriting fails collectstatic on django-htmx's bundled modules, which import the
    bare name "htmx". A module that chat.js imports by relative path is fetched by its plain
    name, which WhiteNoise serves with a short cache lifetime: correct, merely less cached."""


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    def serve(self, static_file: Any, request: Any) -> Any:
        response = super().serve(static_file, request)
        stream = getattr(response, "file_to_stream", None)
        if stream is not None and not response.is_async:
            # The file stays registered for closing (FileResponse's resource closers).
            response.streaming_content = _chunks(stream)
        return response


def missing_manifest() -> Path | None:
    """The manifest file a hashed-names storage needs but has not got (collectstatic has not
    run into STATIC_ROOT); None when the storage needs none or it is there."""
    # isinstance sees through the LazyObject: it proxies __class__.
    if not isinstance(staticfiles_storage, ManifestStaticFilesStorage):
        return None
    manifest = Path(settings.STATIC_ROOT) / staticfiles_storage.manifest_name
    return None if manifest.is_file() else manifest
