"""ASGI entry point: HTTP (Django; static files by WhiteNoise, chatsite/static_files.py) and
WebSockets (Channels)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chatsite.access_log import AccessLog  # noqa: E402
from chatsite.origin import OriginCheck  # noqa: E402
from rooms.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Static files are served by the node itself (WhiteNoise middleware): no web server needed.
        "http": django_asgi_app,
        # A foreign Origin is refused at the handshake (403) before any upgrade.
        "websocket": OriginCheck(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
# Outermost: one access-log line per request and per socket, with the status or close code the
# client saw, and a connection id for every line logged meanwhile.
application = AccessLog(application)
