"""The per-item result record: one JSON-ready dict per image, the same everywhere it is written.

The CLI's JSON lines, the batch job's results file and the service's responses are all built here,
so a consumer parses one format:

    {"image": name, "task": "<OD>", "result": answer, "seconds": 0.4121, "image_size": [width, height]}
    {"image": name, "task": "<OD>", "error": "one line"}

`image` is the item's name as the caller gives it (a path, `file.pdf#page=3`, an upload's name).
`image_size` is the size the answer's coordinates refer to: the image as the model saw it.
"""

from __future__ import annotations


def result_record(item: str, task: str, answer, seconds: float, image_size: tuple[int, int], **extra) -> dict:
    """The record of an answered item; `extra` (e.g. ids, files written) is appended after the fixed keys."""
    width, height = image_size
    return {"image": item, "task": task, "result": answer, "seconds": round(float(seconds), 4),
            "image_size": [int(width), int(height)], **extra}


def error_record(item: str, task: str, message: str, **extra) -> dict:
    """The record of an item that could not be answered: one line saying why."""
    return {"image": item, "task": task, "error": " ".join(str(message).split()), **extra}
