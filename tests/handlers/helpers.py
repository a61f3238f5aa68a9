"""Call the app with `Request` objects and run its exchanges by hand, as the core would."""

from __future__ import annotations

from collections.abc import Iterable

from protocol import App, FileBody, Request, Response


def request(method: bytes, target: bytes, *headers: tuple[bytes, bytes]) -> Request:
    """A request head; header names are lower-case, as the core hands them over."""
    return Request(method, target, ((b"host", b"example"), *headers))


def call(app: App, req: Request, body: Iterable[bytes] = ()) -> Response:
    """The response to `req`: direct, or from an exchange's start() (a refusal before the body),
    or by feeding it `body` and asking it to respond."""
    reply = app(req)
    if isinstance(reply, Response):
        return reply
    assert reply.may_block, "an exchange here touches the disk"
    refusal = reply.start()
    if refusal is not None:
        return refusal
    for chunk in body:
        early = reply.receive(chunk)
        if early is not None:
            return early
    return reply.respond()


def header(response: Response, name: bytes) -> bytes | None:
    """A response header's value by case-insensitive name."""
    values = [value for key, value in response.headers if key.lower() == name.lower()]
    assert len(values) <= 1, f"{name!r} repeated"
    return values[0] if values else None


def body_bytes(response: Response) -> bytes:
    """The response's body; a file body is read (its part only) and closed."""
    body = response.body
    if isinstance(body, bytes):
        return body
    assert isinstance(body, FileBody)
    with body.file as file:
        file.seek(body.offset)
        return file.read(body.length)


def close_body(response: Response) -> None:
    if isinstance(response.body, FileBody):
        response.body.file.close()
