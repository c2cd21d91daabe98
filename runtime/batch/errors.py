"""The batch job's own error: a bad input, output or option named on the command line."""

from __future__ import annotations

from ..errors import Florence2Error


class JobError(Florence2Error):
    """Something about the whole job is wrong (a missing input, an output that is not ours, a second
    run on one results file): reported in one line, exit 2, before any item runs."""
