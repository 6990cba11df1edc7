"""The ASGI application: HTTP through Django, websockets through Channels."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402 - needs Django set up first

from accounts.websocket import TokenOrSessionAuthMiddleware  # noqa: E402
from controlplane.routing import websocket_urlpatterns  # noqa: E402
from runs.events import publisher  # noqa: E402

_router = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": TokenOrSessionAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
)
_loop_bound = False


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope: dict[str, Any], receive: Any, send: Any) -> Any:
    global _loop_bound
    if not _loop_bound:
        # Frames published from sync code in this process go out on the server's loop, where the
        # in-process channel layer (standalone) lives.
        publisher.use_loop(asyncio.get_running_loop())
        _loop_bound = True
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    return await _router(scope, receive, send)
