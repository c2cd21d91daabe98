"""Fault injection for the kill suite (tests/test_kills.py): `FLORENCE2_EDGE_FAULT=POINT=ACTION` stops an
export at a named point, so that a test kills it at an exact step instead of after a guessed delay.

    POINT   before:<graph>  the writer is about to write that graph
            after:<graph>   the graph is written and has passed the parity gate
            manifest        the staging folder is complete, manifest included
            swap            between the two renames that put the new artifact in place
            swapped         the new artifact is in place, the previous one not yet removed
    ACTION  kill (default; SIGKILL: nothing runs after it), term (SIGTERM to itself),
            enospc (the OSError a full disk gives the writer)

Unset (always, outside tests), a point costs one environment lookup.
"""

from __future__ import annotations

import errno
import os
import signal

VARIABLE = "FLORENCE2_EDGE_FAULT"
ACTIONS = ("kill", "term", "enospc")


def fault_point(name: str) -> None:
    setting = os.environ.get(VARIABLE)
    if not setting:
        return
    point, _, action = setting.partition("=")
    if point != name:
        return
    action = action or "kill"
    if action == "kill":
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs as this call returns
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{name} ({VARIABLE})")
    else:
        raise RuntimeError(f"{VARIABLE}={setting}: unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
