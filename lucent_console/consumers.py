from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string

from .status import bus_status


class LiveConsumer(AsyncWebsocketConsumer):
    """Live updates for the open page. Anonymous sockets are refused.

    On (re)connect the client gets the whole current panel; later issues add
    the groups the collector sends snapshots to.
    """

    async def connect(self):
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        await self.accept()
        status = await bus_status()
        await self.send(text_data=render_to_string("fragments/bus_status.html",
                                                   {"bus": status, "oob": True}))
