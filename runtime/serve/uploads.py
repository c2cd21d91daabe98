"""Upload handling: a body-size limit enforced before and while reading, and the multipart form read
into bytes and fields.

The limit is checked twice because a client need not tell the truth: a declared Content-Length over
it is refused before one byte of the body is read, and the bytes actually received are counted as
they stream in (chunked uploads declare nothing), so no upload ever costs more than the limit.
Only uploaded bytes are ever decoded: a form field naming a path is refused, never opened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import ClientError

IMAGE_FIELD = "image"


class UploadTooLarge(ClientError):
    def __init__(self, limit: int):
        super().__init__(413, f"the upload is over the limit of {_megabytes(limit)} (--max-upload-mb)")


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413, declared or counted."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and _over(declared, self.max_bytes):
            return await _refuse(send, UploadTooLarge(self.max_bytes))
        counted = 0

        async def counting_receive():
            nonlocal counted
            message = await receive()
            if message["type"] == "http.request":
                counted += len(message.get("body", b""))
                if counted > self.max_bytes:
                    raise UploadTooLarge(self.max_bytes)  # the app's error handler answers 413
            return message

        return await self.app(scope, counting_receive, send)


@dataclass
class Upload:
    name: str  # the file name the client gave, used only to name the image in the record
    data: bytes
    fields: dict[str, str]


async def read_upload(request) -> Upload:
    """The form's image bytes and its text fields; 400 for anything that is not such a form."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise ClientError(400, f"expected a multipart/form-data upload with an {IMAGE_FIELD!r} file; got "
                               f"{kind.split(';')[0] or 'no content type'}")
    async with request.form(max_files=2, max_fields=16) as form:
        files = [(key, value) for key, value in form.multi_items() if not isinstance(value, str)]
        fields = {}
        for key, value in form.multi_items():
            if isinstance(value, str):
                if key in fields:
                    raise ClientError(422, f"the field {key!r} is given twice")
                fields[key] = value
        if IMAGE_FIELD in fields:
            raise ClientError(400, f"expected {IMAGE_FIELD!r} to be an uploaded file, got a text field "
                                   "(the service never opens a path it is given)")
        images = [value for key, value in files if key == IMAGE_FIELD]
        others = sorted({key for key, _ in files if key != IMAGE_FIELD})
        if others:
            raise ClientError(422, f"unexpected file field {others[0]!r}; send the image as {IMAGE_FIELD!r}")
        if len(images) != 1:
            raise ClientError(400, f"expected one file in the {IMAGE_FIELD!r} field, got {len(images)}")
        data = await images[0].read()
        return Upload(images[0].filename or "upload", data, fields)


async def _refuse(send, error: ClientError) -> None:
    body = (json.dumps({"error": error.message}) + "\n").encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _over(declared: bytes, limit: int) -> bool:
    try:
        return int(declared) > limit
    except ValueError:
        return False  # not a number: the server rejects it; counting still guards us


def _megabytes(count: int) -> str:
    return f"{count / 2**20:g} MB"
