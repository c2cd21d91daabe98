"""User-facing errors of the runtime.

The CLI prints `str(err)` as a single line, so every message is one line that says what was
expected and what was got. Anything else escaping the runtime is a bug, not a user error.
"""

from __future__ import annotations


class Florence2Error(Exception):
    """Base of every error a user can cause (bad image, task, text or artifact)."""


class ImageError(Florence2Error):
    """An input image is missing, unreadable, truncated or of the wrong type or shape."""


class TaskError(Florence2Error):
    """An unknown task token, or text given to / missing from a task."""


class ArtifactError(Florence2Error):
    """An exported artifact (manifest, graph, config) is missing, malformed or unsupported."""


class BackendError(Florence2Error):
    """The inference backend cannot run a graph: its package is missing, the device is not there, or
    the graph failed or produced values that are not finite."""
