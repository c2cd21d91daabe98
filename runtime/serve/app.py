"""The ASGI app: the endpoints, the kiosk page, and the error bodies.

    POST /v1/predict   multipart: image (file), task, text?, num_beams?, max_new_tokens? -> one record
    GET  /v1/tasks     the artifact's task table: which tasks take text
    GET  /v1/info      target, precision, device, checkpoint, the service's limits
    GET  /healthz      {"status": "ready", "queued", "running"} while the worker runs
    GET  /             the kiosk page (static/, served from the package: no internet needed)

A predict response is the record the CLI prints for one image (runtime/records.py). Every error is one
JSON line with an "error" key; a predict error is the CLI's error record. Tracebacks go to the
service's stderr, never to a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import Florence2Error
from ..records import error_record
from .access import BearerToken
from .checks import Limits, make_job
from .errors import ClientError, status_of
from .uploads import BodyLimit, read_upload
from .worker import InferenceWorker, QueueFull, WorkerStopped

STATIC = Path(__file__).resolve().parent / "static"
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class ServiceOptions:
    max_queue: int = 16
    max_batch: int = 8
    max_upload_bytes: int = 20 * 2**20
    max_beams: int = 8
    token: str | None = None


def json_line(payload: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(payload, ensure_ascii=False) + "\n", status_code=status,
                    media_type="application/json", headers=headers)


def create_app(model, options: ServiceOptions = ServiceOptions(), gate=None) -> Starlette:
    """The service for one loaded `model`. Its worker thread starts and stops with the app's lifespan
    (stopping finishes the queued jobs first). `gate`: see InferenceWorker."""
    worker = InferenceWorker(model, options.max_queue, options.max_batch, gate)
    limits = Limits(max_beams=options.max_beams)
    api = _Endpoints(model, worker, limits, options)
    routes = [
        Route("/", api.page), Route("/healthz", api.health), Route("/v1/tasks", api.tasks),
        Route("/v1/info", api.info), Route("/v1/predict", api.predict, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=api.lifespan,
                    exception_handlers={ClientError: _client_error, HTTPException: _http_error, Exception: _crash})
    app.state.worker = worker
    app.add_middleware(BodyLimit, max_bytes=options.max_upload_bytes)
    if options.token:
        app.add_middleware(BearerToken, token=options.token)  # added last: outermost, so checked first
    return app


class _Endpoints:
    def __init__(self, model, worker: InferenceWorker, limits: Limits, options: ServiceOptions):
        self.model, self.worker, self.limits, self.options = model, worker, limits, options

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.worker.start()
        try:
            yield
        finally:
            # The server has stopped taking requests and answered the ones in flight: nothing is queued.
            await run_in_threadpool(self.worker.stop)

    async def page(self, request):
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def health(self, request):
        if not self.worker.alive:
            return json_line({"status": "stopping"}, 503)
        return json_line({"status": "ready", **self.worker.load()})

    async def tasks(self, request):
        table = [{"task": t.token, "takes_text": t.takes_input, "parse_type": t.parse_type}
                 for t in self.model.tasks.values()]
        return json_line({"tasks": table})

    async def info(self, request):
        manifest, defaults = self.model.manifest, self.model.defaults
        return json_line({
            "target": manifest.target, "precision": manifest.precision, "device": self.model.device,
            "checkpoint": manifest.source.get("model"), "source": manifest.source,
            "static": manifest.static is not None, "image_size": manifest.dims.image_size,
            "defaults": {"num_beams": defaults.num_beams, "max_new_tokens": defaults.max_new_tokens},
            "limits": {"max_queue": self.options.max_queue, "max_batch": self.worker.max_batch,
                       "max_beams": self.limits.max_beams,
                       "max_upload_mb": self.options.max_upload_bytes / 2**20},
        })

    async def predict(self, request):
        upload = await read_upload(request)
        task = upload.fields.get("task", "")
        try:
            self.worker.check_room()  # before decoding: a flood is refused cheaply
            job = await run_in_threadpool(make_job, self.model, upload, self.limits)
            future = self.worker.submit(job)
        except ClientError as err:
            return json_line(error_record(upload.name, task, err.message), err.status)
        except (QueueFull, WorkerStopped) as err:
            raise ClientError(503, str(err), {"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        try:
            record, batch_size = await asyncio.wrap_future(future)
        except Florence2Error as err:
            return json_line(error_record(job.name, job.task, str(err)), status_of(err))
        return json_line(record, headers={"X-Batch-Size": str(batch_size)})


async def _client_error(request, err: ClientError):
    return json_line({"error": err.message}, err.status, err.headers)


async def _http_error(request, err: HTTPException):
    return json_line({"error": str(err.detail)}, err.status_code, getattr(err, "headers", None))


async def _crash(request, err: Exception):
    # A bug, not a client's mistake: the details are for the operator's log only.
    traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    return json_line({"error": "internal error (see the service's log)"}, 500)
