"""What a client is told when a request fails: a status and one line, never a traceback.

The runtime's own errors map onto statuses by what they mean: the image is bad (400), the task, text
or an option is bad (422); anything else from the runtime is the service's problem (500).
"""

from __future__ import annotations

from ..contract import LimitError
from ..errors import Florence2Error, ImageError, TaskError
from ..generation import OptionError


class ClientError(Exception):
    """A request the service refuses, with the HTTP status that says why."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, " ".join(str(message).split()), headers or {}


def status_of(err: Florence2Error) -> int:
    if isinstance(err, ImageError):
        return 400
    if isinstance(err, (TaskError, OptionError, LimitError)):
        return 422
    return 500
