"""WebSocket endpoints written with FastAPI and Starlette, as users write them: `ws_frameworks:api`.

No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time.
"""

import anyio
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.endpoints import WebSocketEndpoint
from starlette.routing import WebSocketRoute

TRACKED: dict[str, dict[str, object]] = {}

api = FastAPI()


@api.websocket("/chat/{room}")
async def chat(websocket: WebSocket, room: str, name: str, limit: int = 100) -> None:
    """JSON both ways; `name` is required (FastAPI refuses the handshake without it)."""
    await websocket.accept()
    await websocket.send_json({"room": room, "name": name, "limit": limit})
    try:
        while True:
            data = await websocket.receive_json()
            await websocket.send_json({"echo": data, "from": name})
    except WebSocketDisconnect as exc:
        TRACKED[f"chat-{room}"] = {"code": exc.code}


@api.websocket("/bytes")
async def reverse(websocket: WebSocket) -> None:
    await websocket.accept(subprotocol="binary")
    async for data in websocket.iter_bytes():
        await websocket.send_bytes(data[::-1])


@api.websocket("/closing")
async def closing(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.close(code=1008, reason="policy")


@api.websocket("/ticker/{key}")
async def ticker(websocket: WebSocket, key: str) -> None:
    """Sends until the client leaves: Starlette raises WebSocketDisconnect from send_text."""
    await websocket.accept()
    try:
        while True:
            await websocket.send_text("tick")
            await anyio.sleep(0.02)
    except WebSocketDisconnect as exc:
        TRACKED[f"ticker-{key}"] = {"code": exc.code}


class Counter(WebSocketEndpoint):
    encoding = "text"

    async def on_connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.count = 0

    async def on_receive(self, websocket: WebSocket, data: str) -> None:
        self.count += 1
        await websocket.send_text(f"{self.count}: {data}")


api.router.routes.append(WebSocketRoute("/count", Counter))


@api.get("/tracked/{key}")
async def tracked(key: str) -> dict[str, object]:
    return TRACKED.get(key, {})
