"""A test-only ASGI app: the project's own app plus one consumer of the project's channel layer,
as a user's consumer would be (``/ws/probe/``: what one socket says reaches every socket of
the ``probe`` group, on any node). Nodes load it with ``DJANGO_SETTINGS_MODULE`` set to
``tests.support.layer_settings``; it is no part of the product."""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.conf import settings
from django.urls import path

from chatsite.asgi import application as chat_application
from rooms.routing import websocket_urlpatterns

GROUP = "probe"


class LayerProbe(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()
        await self.send_json({"type": "ready", "node": settings.CHAT_NODE_NAME})

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.channel_layer.group_send(
            GROUP,
            {"type": "probe.said", "text": content.get("say"), "from": settings.CHAT_NODE_NAME},
        )

    async def probe_said(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "said", "text": event["text"], "from": event["from"]})


application = ProtocolTypeRouter(
    {
        # The project's application is wrapped in its access log (chatsite/access_log.py).
        "http": getattr(chat_application, "app", chat_application).application_mapping["http"],
        "websocket": AuthMiddlewareStack(
            URLRouter([path("ws/probe/", LayerProbe.as_asgi()), *websocket_urlpatterns])
        ),
    }
)
