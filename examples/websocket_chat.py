"""A FastAPI chat room over WebSockets, served as any ASGI app: one room per path, every
message broadcast to everyone in the room.

    ./your_program.sh examples.websocket_chat:app --transport trio      # or asyncio, threads

then open http://localhost:4221/ in two browser tabs (a tiny page is served at `/`), or
connect with any WebSocket client to ws://localhost:4221/rooms/lobby?name=ann. Needs
FastAPI (`requirements-dev.txt` has it); exercised by tests/behaviour/test_websocket.py.
"""

import anyio
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse

app = FastAPI()
rooms: dict[str, set[WebSocket]] = {}

PAGE = """<!doctype html>
<title>chat</title>
<ul id="log"></ul>
<form id="f"><input id="m" autocomplete="off"><button>send</button></form>
<script>
const ws = new WebSocket(`ws://${location.host}/rooms/lobby?name=tab${Math.floor(Math.random() * 1000)}`);
ws.onmessage = (e) => { const li = document.createElement("li"); li.textContent = e.data; log.append(li); };
f.onsubmit = (e) => { e.preventDefault(); ws.send(m.value); m.value = ""; };
</script>
"""


@app.get("/")
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE)


@app.websocket("/rooms/{room}")
async def chat(websocket: WebSocket, room: str, name: str) -> None:
    await websocket.accept()
    members = rooms.setdefault(room, set())
    members.add(websocket)
    await broadcast(room, f"{name} joined")
    try:
        async for text in websocket.iter_text():
            await broadcast(room, f"{name}: {text}")
    except WebSocketDisconnect:
        pass
    finally:
        members.discard(websocket)
        await broadcast(room, f"{name} left")


async def broadcast(room: str, text: str) -> None:
    """Send to everyone in the room at once; a member that left meanwhile is skipped."""

    async def send(member: WebSocket) -> None:
        try:
            await member.send_text(text)
        except (WebSocketDisconnect, RuntimeError):
            rooms.get(room, set()).discard(member)

    async with anyio.create_task_group() as group:
        for member in list(rooms.get(room, ())):
            group.start_soon(send, member)
