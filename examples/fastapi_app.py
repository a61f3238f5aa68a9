"""A small FastAPI app, served as any ASGI app is (README, "Serve your app"), on any transport:

    ./your_program.sh examples.fastapi_app:app --transport trio --port 8080   # from the repo root

    GET  /                    text
    GET  /api/items/{id}      JSON from the lifespan's state (404 as JSON when absent)
    POST /api/items           a JSON body checked by pydantic: 201, or 422 with the errors
    POST /form                an HTML form's fields, as JSON
    POST /upload              multipart file upload: name, size and sha256 of each file
    GET  /stream?count=N      N lines, streamed as they are made (chunked)
    GET  /events?track=ID     an endless event stream (text/event-stream)
    GET  /events/ID           how the stream ID ended (its generator's `finally` ran)
    GET  /download            a file (this one), sent with sendfile (http.response.pathsend)
    POST /notes               201 at once; a background task stores the note afterwards
    GET  /notes               the notes stored so far
    GET  /boom                an unhandled error: 500, traceback in the server's log

The lifespan opens the "database" (a dict) before the first request and closes it after the
last: `--lifespan auto` (the default) runs it. FastAPI and python-multipart are not
dependencies of the server: install them where the app runs (the tests pin them in
requirements-dev.txt).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import BackgroundTasks, FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel

DOWNLOAD = Path(__file__)
"""The file /download serves: this app's own source."""
NOTES: list[str] = []
STREAMS: dict[str, str] = {}
"""How each /events stream ended, by track id."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    database = {"items": {1: "apple", 2: "pear"}, "pid": os.getpid()}
    print("fastapi_app: startup", file=sys.stderr, flush=True)
    yield {"db": database}  # each request's `request.state.db`
    database.clear()
    print("fastapi_app: shutdown", file=sys.stderr, flush=True)


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@app.get("/", response_class=PlainTextResponse)
async def index() -> str:
    return "Hello from FastAPI\n"


@app.get("/api/items/{item_id}")
async def get_item(item_id: int, request: Request) -> dict[str, Any]:
    items = request.state.db["items"]
    if item_id not in items:
        raise HTTPException(404, "no such item")
    return {"id": item_id, "name": items[item_id]}


@app.post("/api/items", status_code=201)
async def add_item(item: Item) -> dict[str, Item]:
    return {"created": item}


@app.post("/form")
async def form(a: Annotated[str, Form()], b: Annotated[str, Form()]) -> dict[str, str]:
    return {"a": a, "b": b}


@app.post("/upload")
async def upload(request: Request) -> dict[str, Any]:
    files, fields = {}, {}
    async with request.form() as data:
        for name, value in data.multi_items():
            if isinstance(value, str):
                fields[name] = value
                continue
            digest, size = hashlib.sha256(), 0
            while chunk := await value.read(65536):
                digest.update(chunk)
                size += len(chunk)
            files[name] = {"filename": value.filename, "size": size, "sha256": digest.hexdigest()}
    return {"files": files, "fields": fields}


@app.post("/upload-file")
async def upload_file(file: UploadFile) -> dict[str, Any]:
    data = await file.read()
    return {"filename": file.filename, "size": len(data)}


@app.get("/stream")
async def stream(count: int = 3, delay: float = 0.0) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        for index in range(count):
            if index and delay:
                await anyio.sleep(delay)
            yield f"line {index}\n"

    return StreamingResponse(lines(), media_type="text/plain")


@app.get("/events")
async def events(track: str = "-", every: float = 0.05) -> StreamingResponse:
    async def messages() -> AsyncIterator[str]:
        count = 0
        STREAMS[track] = "running"
        try:
            while True:
                yield f"data: {count}\n\n"
                count += 1
                await anyio.sleep(every)
        finally:
            STREAMS[track] = f"ended after {count} events"

    return StreamingResponse(messages(), media_type="text/event-stream")


@app.get("/events/{track}")
async def event_status(track: str) -> dict[str, str | None]:
    return {"status": STREAMS.get(track)}


@app.api_route("/download", methods=["GET", "HEAD"])
async def download() -> FileResponse:
    return FileResponse(DOWNLOAD, media_type="text/plain", filename=DOWNLOAD.name)


@app.post("/notes", status_code=201)
async def add_note(note: Annotated[str, Form()], tasks: BackgroundTasks) -> dict[str, str]:
    async def store() -> None:
        await anyio.sleep(1.0)  # long after the response went out
        NOTES.append(note)

    tasks.add_task(store)
    return {"accepted": note}


@app.get("/notes")
async def notes() -> list[str]:
    return NOTES


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("an unhandled error in a FastAPI endpoint (the traceback goes to the log)")
