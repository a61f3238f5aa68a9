"""The views: JSON, a form, a multipart upload, a streamed response, a file, a cookie, an error."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.http import require_GET, require_POST, require_safe

ITEMS = {1: "apple", 2: "pear"}


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello from Django\n", content_type="text/plain")


@require_GET
def item(request: HttpRequest, item_id: int) -> JsonResponse:
    if item_id not in ITEMS:
        raise Http404("no such item")
    return JsonResponse({"id": item_id, "name": ITEMS[item_id]})


@require_POST
def add_item(request: HttpRequest) -> HttpResponse:
    try:
        data = json.loads(request.body)
    except ValueError:
        return HttpResponseBadRequest("invalid JSON\n")
    return JsonResponse({"created": data}, status=201)


@require_POST
def form(request: HttpRequest) -> JsonResponse:
    return JsonResponse(request.POST.dict())


@require_POST
def upload(request: HttpRequest) -> JsonResponse:
    files = {}
    for name, uploaded in request.FILES.items():
        digest, size = hashlib.sha256(), 0
        for chunk in uploaded.chunks():
            digest.update(chunk)
            size += len(chunk)
        files[name] = {"filename": uploaded.name, "size": size, "sha256": digest.hexdigest()}
    return JsonResponse({"files": files, "fields": request.POST.dict()})


@require_GET
def stream(request: HttpRequest) -> StreamingHttpResponse:
    count = int(request.GET.get("count", "3"))
    delay = float(request.GET.get("delay", "0"))

    def lines() -> Iterator[bytes]:
        for index in range(count):
            if index and delay:
                time.sleep(delay)
            yield b"line %d\n" % index

    return StreamingHttpResponse(lines(), content_type="text/plain")


@require_safe
def download(request: HttpRequest) -> FileResponse:
    return FileResponse(open(Path(__file__), "rb"), as_attachment=True)  # Django closes it


def cookie(request: HttpRequest) -> HttpResponse:
    """A cookie, as every Django login page sets one (CSRF): Django's WSGI handler hands
    each `Set-Cookie` value over with a leading space."""
    response = HttpResponse("a cookie\n", content_type="text/plain")
    response.set_cookie("flavour", "oat", max_age=60, samesite="Lax")
    return response


@require_GET
def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("an unhandled error in a Django view (expected by the test)")
