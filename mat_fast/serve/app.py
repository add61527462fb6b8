"""The web app of ``mat-fast serve``: the page, and the fill as an HTTP API (Starlette).

Every upload is decoded and checked (an image, under the pixel limit, a mask of its size)
before it joins the queue, so the model only ever sees valid fills and a bad request gets
a 4xx JSON error saying what is wrong. Uploads are read into memory (the multipart parser's
spill files are closed, hence removed, at the end of the request) and nothing is written on
the server. Files are served from a fixed table read at start-up: no path from a request
ever reaches the file system.
"""

from __future__ import annotations

import contextlib
import io
import secrets
from pathlib import Path
from typing import Optional, Sequence

import anyio
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..image_io import (
    InputError,
    image_bytes,
    output_metadata,
    to_hole_mask,
    to_image_data,
    upright,
)
from .fill_queue import FillQueue, Job, QueueFull

PACKAGE = Path(__file__).resolve().parent
STATIC_FILES = {  # URL -> (file, media type): the only files the server ever reads
    "/": (PACKAGE / "static" / "index.html", "text/html; charset=utf-8"),
    "/static/app.css": (PACKAGE / "static" / "app.css", "text/css; charset=utf-8"),
    "/static/app.js": (PACKAGE / "static" / "app.js", "text/javascript; charset=utf-8"),
    "/static/mask.js": (PACKAGE / "static" / "mask.js", "text/javascript; charset=utf-8"),
    "/sample.png": (PACKAGE.parent / "assets" / "sample.png", "image/png"),
}
EMPTY_MASK_NOTICE = "the mask is empty: nothing to fill, the image is returned unchanged"
MAX_SEED = 2**32 - 1


class RequestError(Exception):
    """A bad request: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class UploadLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` (413), by their declared
    length up front and by the bytes actually received (a client may not declare it)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise RequestError(413, self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return (
            f"upload over this server's limit of {self.max_bytes / 1e6:.0f} MB "
            f"(mat-fast serve --max-upload-mb)"
        )

    async def _refuse(self, scope, receive, send):
        await JSONResponse({"error": self._message()}, status_code=413)(scope, receive, send)


def decode_upload(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """An uploaded file as an upright PIL image, its size checked before it is decoded."""
    if not data:
        raise RequestError(400, f"the {what} is missing or empty; send it as a file field")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise RequestError(413, f"the {what} has too many pixels for this server") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise RequestError(
            415,
            f"the {what} upload is not a readable image; send PNG, JPEG, WebP, TIFF or BMP",
        ) from None
    width, height = im.size
    if width * height > max_pixels:
        raise RequestError(
            413,
            f"the {what} is {width}x{height} ({width * height / 1e6:.3g} megapixels), over this "
            f"server's limit of {max_pixels / 1e6:g} megapixels (mat-fast serve --max-megapixels)",
        )
    try:
        return upright(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise RequestError(415, f"the {what} is damaged or truncated ({err})") from None


def _text(value) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise RequestError(400, "seed and mask_convention are text fields, not files")
    return value


def _seed(text: Optional[str]) -> int:
    if text in (None, ""):
        return secrets.randbelow(2**31)  # a fresh fill; the response says which seed it was
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed <= MAX_SEED:
        raise RequestError(400, f"seed must be a whole number from 0 to {MAX_SEED}; got {text!r}")
    return seed


def create_app(
    inpainter,
    *,
    max_megapixels: float = 50.0,
    max_upload_mb: float = 100.0,
    weights: str = "",
    queue: Optional[FillQueue] = None,
    allowed_hosts: Optional[Sequence[str]] = None,
) -> Starlette:
    """The app around one loaded ``inpainter`` (an :class:`~mat_fast.Inpainter`).

    ``weights`` is shown on the page (which checkpoint, or that weights are random).
    ``allowed_hosts``: the only Host headers answered (None: any). A server on 127.0.0.1
    answers only to its own names, so a web site that re-points its DNS name to 127.0.0.1
    (DNS rebinding) cannot use it.
    """
    max_pixels = int(max_megapixels * 1e6)
    queue = queue or FillQueue()
    static = {url: (path.read_bytes(), media) for url, (path, media) in STATIC_FILES.items()}

    async def read_fill(request: Request) -> Job:
        """The request's image, mask and options, checked, as a job not yet queued."""
        origin = request.headers.get("origin")
        if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
            # Another web site's page posting here: refused, so a site cannot use the model.
            raise RequestError(403, f"requests from other sites ({origin}) are not accepted")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise RequestError(
                400, "send a multipart/form-data body with 'image' and 'mask' file fields"
            )
        async with request.form(max_files=2, max_fields=4) as form:
            uploads = {}
            for name in ("image", "mask"):
                part = form.get(name)
                uploads[name] = await part.read() if hasattr(part, "read") else b""
            seed = _seed(_text(form.get("seed")))
            convention = _text(form.get("mask_convention")) or "fill"

        def check():  # in a thread: decoding a large photo takes a while
            image = decode_upload(uploads["image"], "image", max_pixels)
            mask = decode_upload(uploads["mask"], "mask", max_pixels)
            try:
                if image.mode not in ("L", "LA", "RGB", "RGBA"):  # 8-bit modes always convert
                    to_image_data(image)  # 16-bit, float, exotic: what the Inpainter refuses
                hole = to_hole_mask(mask, (image.size[1], image.size[0]), convention)
            except InputError as err:
                raise RequestError(422, str(err)) from None
            return image, mask, hole

        image, mask, hole = await run_in_threadpool(check)

        def work() -> bytes:  # on the worker: the model and the encoding
            result = inpainter(image, mask, seed=seed, mask_convention=convention)
            return image_bytes(result, metadata=output_metadata(image))  # EXIF, ICC kept

        job = Job(work=work, seed=seed)
        if not hole.any():
            unchanged = await run_in_threadpool(image_bytes, image, "PNG", output_metadata(image))
            queue.add_finished(job, unchanged, EMPTY_MASK_NOTICE)
        return job

    async def fill(request: Request) -> Response:
        """POST image + mask -> the filled PNG, once the queue reaches this request."""
        job = await read_fill(request)
        if job.state != "done":
            queue.submit(job)
        while not job.done.is_set():
            if await request.is_disconnected():  # the client gave up: never compute it
                queue.cancel(job.id)
                return Response(status_code=499)
            queue.get(job.id)  # still wanted
            await anyio.sleep(0.05)
        queue.cancel(job.id)  # forget it: the result goes out in this response
        if job.state != "done":
            return JSONResponse({"error": job.error or "the fill was cancelled"}, status_code=500)
        headers = {"X-Seed": str(job.seed)}
        if job.notice:
            headers["X-Notice"] = job.notice
        return Response(job.result, media_type="image/png", headers=headers)

    async def submit_job(request: Request) -> Response:
        """POST image + mask -> 202 and a job id to poll (what the page uses)."""
        job = await read_fill(request)
        if job.state != "done":
            queue.submit(job)
        return JSONResponse(job.status(queue.position(job)), status_code=202)

    def _job(request: Request) -> Job:
        job = queue.get(request.path_params["job_id"])
        if job is None:
            raise RequestError(404, "no such job (finished results are kept for a few minutes)")
        return job

    async def job_status(request: Request) -> Response:
        job = _job(request)
        return JSONResponse(job.status(queue.position(job)))

    async def job_result(request: Request) -> Response:
        job = queue.take_result(request.path_params["job_id"])  # atomic: one taker only
        if job is None:
            raise RequestError(404, "no such job (a result is handed out once)")
        if job.state != "done":
            raise RequestError(409, f"the job is {job.state}, not done")
        headers = {"X-Seed": str(job.seed)}
        return Response(job.result, media_type="image/png", headers=headers)

    async def cancel_job(request: Request) -> Response:
        queue.cancel(request.path_params["job_id"])
        return Response(status_code=204)

    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "weights": weights,
                "resolution": inpainter.resolution,
                "device": str(getattr(inpainter, "device", "")),
                "max_megapixels": max_megapixels,
                "max_upload_mb": max_upload_mb,
            }
        )

    async def static_file(request: Request) -> Response:
        body, media = static[request.url.path]
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    async def request_error(request: Request, err: RequestError) -> Response:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    async def queue_full(request: Request, err: QueueFull) -> Response:
        return JSONResponse({"error": str(err)}, status_code=429)

    async def http_error(request: Request, err: HTTPException) -> Response:
        # Starlette's own errors (unknown URL, malformed multipart) as JSON too
        return JSONResponse({"error": err.detail}, status_code=err.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        queue.start()
        yield
        queue.stop(timeout=2.0)  # a fill still running ends with the process (daemon thread)

    routes = [Route(url, static_file) for url in static] + [
        Route("/api/info", info),
        Route("/api/fill", fill, methods=["POST"]),
        Route("/api/jobs", submit_job, methods=["POST"]),
        Route("/api/jobs/{job_id}", job_status),
        Route("/api/jobs/{job_id}", cancel_job, methods=["DELETE"]),
        Route("/api/jobs/{job_id}/result", job_result),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            RequestError: request_error,
            QueueFull: queue_full,
            HTTPException: http_error,
        },
        lifespan=lifespan,
    )
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * 1e6))
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.state.queue = queue
    return app
