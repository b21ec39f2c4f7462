"""The HTTP service: ``POST /predict``, ``GET /health``, ``GET /metadata``, OpenAPI docs at ``/docs``.
This module imports FastAPI: it is imported only to serve.

``/predict`` takes images three ways: a multipart form of files (``curl -F file=@photo.jpg``), a JSON
body ``{"images": [{"name": ..., "data": BASE64}, ...]}`` (or plain base64 strings), or one image as the
raw body (``Content-Type: image/jpeg``). It answers each image with the fields ``scenecls predict
--format json`` gives; an image that cannot be read gets its own error and the others are answered.

Every limit a public endpoint needs sits in :class:`Guard`, a plain ASGI layer before the app: the body's
size (413), a client too slow to send it (408), and one log line per request. Decoding runs in threads,
each image within its time limit; the model runs in :class:`~scenecls.serving.batching.Batcher`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from scenecls.command_options import ServeOptions
from scenecls.serving.batching import Batcher, QueueFull
from scenecls.serving.model import ServedModel
from scenecls.units import count

log = logging.getLogger("scenecls.serve")
MEGABYTE = 1_000_000
JSON_TYPES = ("application/json",)
FORM_TYPES = ("multipart/form-data",)

REQUEST_BODY = {  # for the OpenAPI page: the body is read by hand, so it is described by hand
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "images": {
                        "type": "array",
                        "items": {
                            "oneOf": [
                                {"type": "string", "format": "byte"},
                                {
                                    "type": "object",
                                    "properties": {
                                        "name": {"type": "string"},
                                        "data": {"type": "string", "format": "byte"},
                                    },
                                    "required": ["data"],
                                },
                            ]
                        },
                    },
                    "top_k": {"type": "integer", "minimum": 1},
                    "min_confidence": {"type": "number", "minimum": 0, "maximum": 1},
                },
                "required": ["images"],
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


class RequestError(Exception):
    """A request refused as a whole: its HTTP status and one line saying why."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def create_app(served: ServedModel, options: ServeOptions):
    """The FastAPI application answering with ``served`` under ``options``' limits."""
    batcher = Batcher(
        served.runtime.predict,
        max_batch=options.max_batch,
        max_wait=options.max_wait / 1000,
        max_queue=options.max_queue,
    )
    decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="scenecls-decode")
    counts = {"requests": 0, "images": 0}

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()  # every image accepted is answered first
            decoder.shutdown(wait=False, cancel_futures=True)
            log.info(
                "stopped: %s answered, %s classified in %s",
                count(counts["requests"], "request"), count(batcher.stats.images, "image"),
                count(batcher.stats.batches, "batch", "batches"),
            )  # fmt: skip

    app = FastAPI(
        title="scenecls",
        summary=f"Scene classes of images, from {served.facts.get('run') or served.path.name}",
        version=served.facts["fingerprint"],
        lifespan=lifespan,
    )

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Whether the server answers, and how full its queue is."""
        return {
            "status": "ok",
            "fingerprint": served.fingerprint,
            "queued": batcher.queued,
            "max_queue": options.max_queue,
            "images": batcher.stats.images,
            "batches": batcher.stats.batches,
        }

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        """The model: classes, input size, fingerprint, runtime; for a run, its backbone, temperature and
        accuracy."""
        limits = {
            "max_batch": options.max_batch,
            "max_queue": options.max_queue,
            "max_body_megabytes": options.max_body,
            "max_megapixels": options.max_megapixels,
        }
        defaults = {"top_k": options.top_k, "min_confidence": options.min_confidence}
        return {**served.facts, "limits": limits, "defaults": defaults}

    @app.post("/predict", openapi_extra={"requestBody": REQUEST_BODY})
    async def predict(request: Request):
        """Each image's classes, in the order given; ``top_k`` and ``min_confidence`` as query
        parameters (or JSON fields) override the server's defaults."""
        images, settings = await _read_images(request, options)
        top_k, min_confidence = _settings(request, settings, options)
        request.state.images = len(images)
        predictions = await _answer(images, served, batcher, decoder, options, top_k, min_confidence)
        counts["requests"] += 1
        counts["images"] += len(images)
        body = {"fingerprint": served.fingerprint, "predictions": [p.to_dict() for p in predictions]}
        status = 422 if predictions and not any(p.ok for p in predictions) else 200
        return JSONResponse(body, status_code=status)

    return Guard(app, options)


async def _read_images(request, options: ServeOptions) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """``[(name, bytes)]`` and the JSON body's settings, whichever way the images came."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = options.max_queue
    if kind in FORM_TYPES:
        try:
            form = await request.form(max_files=limit, max_fields=limit + 2)
        except RequestError:
            raise
        except Exception as exc:  # Starlette's MultiPartException, a broken form
            if "too many files" in str(exc).lower():
                raise RequestError(413, f"more images in one request than the {limit} it may hold") from None
            raise RequestError(400, f"the form cannot be read: {exc}") from None
        images = []
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                images.append((value.filename or key, await value.read()))
        settings = {key: form.get(key) for key in ("top_k", "min_confidence") if form.get(key) is not None}
    elif kind in JSON_TYPES:
        try:
            payload = await request.json()
        except ValueError:
            raise RequestError(400, "the body is not JSON") from None
        images, settings = _json_images(payload)
    elif kind.startswith("image/") or kind == "application/octet-stream":
        images, settings = [("image", await request.body())], {}
    else:
        raise RequestError(
            415, 'send images as multipart/form-data, as JSON {"images": [base64, ...]}, or one as image/*'
        )
    if not images:
        raise RequestError(400, "the request holds no image")
    if len(images) > limit:
        raise RequestError(413, f"more images in one request than the {limit} it may hold")
    return images, settings


def _json_images(payload: Any) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise RequestError(400, 'the JSON body needs "images": a list of base64 strings or {"name", "data"}')
    images = []
    for index, item in enumerate(payload["images"]):
        name, data = f"images[{index}]", item
        if isinstance(item, dict):
            name, data = str(item.get("name") or name), item.get("data")
        if not isinstance(data, str):
            raise RequestError(400, f"{name}: the image's data is not a base64 string")
        if data.startswith("data:") and "," in data:  # a data: URL as browsers make them
            data = data.split(",", 1)[1]
        try:
            images.append((name, base64.b64decode(data, validate=True)))
        except (binascii.Error, ValueError):
            raise RequestError(400, f"{name}: the image's data is not valid base64") from None
    settings = {key: payload[key] for key in ("top_k", "min_confidence") if payload.get(key) is not None}
    return images, settings


def _settings(request, given: dict[str, Any], options: ServeOptions) -> tuple[int, float | None]:
    """``top_k`` and ``min_confidence`` from the query or body, checked, else the server's."""
    values = {**given, **{k: v for k, v in request.query_params.items() if k in ("top_k", "min_confidence")}}
    top_k, floor = options.top_k, options.min_confidence
    try:
        if "top_k" in values:
            top_k = int(values["top_k"])
        if "min_confidence" in values:
            floor = float(values["min_confidence"])
    except (TypeError, ValueError):
        raise RequestError(422, "top_k must be a whole number and min_confidence a number") from None
    if top_k < 1 or (floor is not None and not 0 <= floor <= 1):
        raise RequestError(422, "top_k must be at least 1 and min_confidence between 0 and 1")
    return top_k, floor


async def _answer(images, served, batcher, decoder, options, top_k, min_confidence) -> list:
    from scenecls.answers import Prediction, abstain, rank

    loop = asyncio.get_running_loop()
    size = served.runtime.input_size
    decoded = await asyncio.gather(*(_decode(loop, decoder, data, size, options) for _, data in images))
    predictions = [
        Prediction(path=name, error=error) for (name, _), (_, error) in zip(images, decoded, strict=True)
    ]
    ready = [(i, array) for i, (array, _) in enumerate(decoded) if array is not None]
    if ready:
        try:
            rows = await batcher.predict([array for _, array in ready])
        except QueueFull as exc:
            raise RequestError(503, str(exc), {"Retry-After": str(exc.retry_after)}) from None
        for (i, _), row in zip(ready, rows, strict=True):
            rank(predictions[i], row, served.classes, top_k)
    if min_confidence is not None:
        predictions = [abstain(p, min_confidence) for p in predictions]
    return predictions


async def _decode(loop, decoder, data: bytes, size, options: ServeOptions):
    from scenecls.data.images import ImageReadError, decode_rgb

    max_pixels = int(options.max_megapixels * 1_000_000)
    try:
        task = loop.run_in_executor(decoder, lambda: decode_rgb(data, size, max_pixels=max_pixels))
        return await asyncio.wait_for(task, options.decode_timeout), None
    except ImageReadError as exc:
        return None, str(exc)
    except TimeoutError:
        return None, f"decoding took over {options.decode_timeout:g} s"


class Guard:
    """A plain ASGI layer before the app: refuses a body over ``max_body`` (413) or one sent slower than
    ``client_timeout`` (408), and logs one line per request."""

    def __init__(self, app, options: ServeOptions) -> None:
        self.app = app
        self.max_body = int(options.max_body * MEGABYTE)
        self.client_timeout = options.client_timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        reply: dict[str, Any] = {"status": None}

        async def send_logged(message) -> None:
            if message["type"] == "http.response.start":
                reply["status"] = message["status"]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body:
                raise RequestError(413, f"the body is over {self.max_body / MEGABYTE:g} MB")
            await self.app(scope, self._limited(receive), send_logged)
        except RequestError as exc:
            if reply["status"] is None:
                await _reply(send_logged, exc)
        finally:
            client = (scope.get("client") or ("-",))[0]
            images = state.get("images")
            what = f" {count(images, 'image')}" if images is not None else ""
            log.info(
                "%s %s %s %s%s %.1f ms",
                client, scope["method"], scope["path"], reply["status"] or "-", what,
                (time.perf_counter() - started) * 1000,
            )  # fmt: skip

    def _limited(self, receive):
        received = 0

        async def receive_limited():
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), self.client_timeout)
            except TimeoutError:
                raise RequestError(408, f"the body took over {self.client_timeout:g} s to arrive") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise RequestError(413, f"the body is over {self.max_body / MEGABYTE:g} MB")
            return message

        return receive_limited


def _content_length(scope) -> int | None:
    for key, value in scope.get("headers") or []:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reply(send, exc: RequestError) -> None:
    import json

    body = json.dumps({"error": str(exc)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
