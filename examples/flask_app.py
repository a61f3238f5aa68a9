"""A small Flask app, served as any WSGI app is (README, "Serve your app"):

    ./your_program.sh examples.flask_app:app --transport threads --port 8080   # from the repo root

    GET  /                    text
    GET  /api/items/<id>      JSON (404 as JSON when absent)
    POST /api/items           JSON in, 201 JSON out (400 on invalid JSON)
    POST /form                an HTML form's fields, as JSON
    POST /upload              multipart file upload: name, size and sha256 of each file
    GET  /stream?count=N      N lines, streamed as they are made (chunked)
    GET  /download            a file (this one), sent by the server with sendfile (wsgi.file_wrapper)
    GET  /boom                an unhandled error: 500, traceback in the server's log

Flask is not a dependency of the server: install it where the app runs (the tests pin it in
requirements-dev.txt).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

from flask import Flask, Response, abort, jsonify, request, send_file, stream_with_context

app = Flask(__name__)

ITEMS = {1: "apple", 2: "pear"}
DOWNLOAD = Path(__file__)
"""The file /download serves: this app's own source."""


@app.get("/")
def index() -> str:
    return "Hello from Flask\n"


@app.get("/api/items/<int:item_id>")
def get_item(item_id: int) -> Response:
    if item_id not in ITEMS:
        abort(404)
    return jsonify(id=item_id, name=ITEMS[item_id])


@app.post("/api/items")
def add_item() -> tuple[Response, int]:
    data = request.get_json()  # invalid JSON: 400
    return jsonify(created=data), 201


@app.post("/form")
def form() -> Response:
    return jsonify(dict(request.form))


@app.post("/upload")
def upload() -> Response:
    files = {}
    for name, storage in request.files.items():
        digest, size = hashlib.sha256(), 0
        while chunk := storage.stream.read(65536):
            digest.update(chunk)
            size += len(chunk)
        files[name] = {"filename": storage.filename, "size": size, "sha256": digest.hexdigest()}
    return jsonify(files=files, fields=dict(request.form))


@app.get("/stream")
def stream() -> Response:
    count = request.args.get("count", 3, type=int)
    delay = request.args.get("delay", 0.0, type=float)

    def lines() -> Iterator[str]:
        for index in range(count):
            if index and delay:
                time.sleep(delay)
            yield f"line {index}\n"

    return Response(stream_with_context(lines()), mimetype="text/plain")


@app.get("/download")
def download() -> Response:
    return send_file(DOWNLOAD, mimetype="text/plain", as_attachment=True)


@app.get("/boom")
def boom() -> str:
    raise RuntimeError("an unhandled error in a view (the traceback goes to the log)")


@app.errorhandler(404)
def not_found(error: Exception) -> tuple[Response, int]:
    return jsonify(error="not found"), 404
