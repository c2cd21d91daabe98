"""A predict form -> a checked job, or the one-line reason it is refused.

Everything a request can get wrong is checked here, before the job is queued: the image decodes, the
task exists (the runtime suggests the closest), the text is there exactly when the task takes one,
the options are integers in range, the prompt and token budget fit the artifact. A batch therefore
only holds jobs that can run, and a bad request never waits in the queue.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Florence2Error
from ..images import load_image_bytes
from ..prompts import build_prompt
from .errors import ClientError, status_of
from .uploads import Upload
from .worker import Job

TEXT_FIELDS = ("task", "text", "num_beams", "max_new_tokens")
OPTION_FIELDS = ("num_beams", "max_new_tokens")


@dataclass(frozen=True)
class Limits:
    max_beams: int = 8
    max_pixels: int = 100_000_000  # as the batch CLI's default --max-pixels


def check_fields(model, fields: dict[str, str], limits: Limits) -> tuple[str, str | None, dict]:
    """(task, text, generation overrides) of a form, every value checked against the model."""
    unexpected = sorted(set(fields) - set(TEXT_FIELDS))
    if unexpected:
        raise ClientError(422, f"unexpected field {unexpected[0]!r}; accepted: image, {', '.join(TEXT_FIELDS)}")
    task = fields.get("task")
    if not task:
        raise ClientError(422, "expected a 'task' field, e.g. '<OD>' (GET /v1/tasks lists them)")
    text = fields.get("text") or None  # an empty text box is no text
    options = {name: _positive_int(name, fields[name]) for name in OPTION_FIELDS if fields.get(name, "") != ""}
    if options.get("num_beams", 1) > limits.max_beams:
        raise ClientError(422, f"num_beams must be <= {limits.max_beams} (the service's --max-beams), "
                               f"got {options['num_beams']}")
    try:
        prompt = build_prompt(task, text, model.tasks)
        generation = model.defaults.replace(**options)
        model.contract.check_request([len(model.tokenizer.encode(prompt))], generation.max_new_tokens,
                                     generation.num_beams)
    except Florence2Error as err:
        raise ClientError(status_of(err), str(err)) from None
    if "num_beams" not in options and generation.num_beams > limits.max_beams:
        raise ClientError(422, f"this artifact's default num_beams ({generation.num_beams}) is over the service's "
                               f"--max-beams {limits.max_beams}: send num_beams")
    # Spelled out, defaults included: a request that names the default batches with one that omits it.
    return task, text, {name: getattr(generation, name) for name in OPTION_FIELDS}


def make_job(model, upload: Upload, limits: Limits) -> Job:
    """The checked job of an upload; the image is decoded here (in a thread: it is CPU work)."""
    task, text, options = check_fields(model, upload.fields, limits)
    try:
        image = load_image_bytes(upload.data, upload.name, limits.max_pixels)
    except Florence2Error as err:
        raise ClientError(status_of(err), str(err)) from None
    return Job(upload.name, image, task, text, options)


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise ClientError(422, f"{name} must be an integer >= 1, got {value!r}") from None
    if number < 1:
        raise ClientError(422, f"{name} must be an integer >= 1, got {number}")
    return number
