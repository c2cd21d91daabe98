"""Which export a folder belongs to, and the temporary folders dead exports left behind.

An export names every folder it creates after itself (its pid; beside --output also a tag of the
host, since that folder may be on a shared drive), so that the next export can tell the debris of a
killed export (its process is gone: swept) from the folders of one still running (never touched):

    $TMPDIR/florence2-<kind>-<pid>-<random>     scratch: the embedded checkpoint, fp32 graphs before a
                                                precision pass, quantizer output, the tokenizer copy
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

log = logging.getLogger("export")

SCRATCH_KINDS = ("edge", "fp32", "q", "tokenizer")  # quantize/onnx.py names its own "q" folder the same way
_SCRATCH = re.compile(rf"^florence2-({'|'.join(SCRATCH_KINDS)})-(\d+)-[^-]+$")


def host_tag() -> str:
    """Six hex digits for this machine: a pid means something only on the host that issued it."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def owner_tag() -> str:
    """`<pid>-<host>`: the owner part of a folder name beside --output."""
    return f"{os.getpid()}-{host_tag()}"


def alive(pid: int, host: str | None = None) -> bool:
    """Whether the export that named a folder may still be running. Unsure counts as alive: another
    host's pid, a pid now used by another process, a platform without a cheap check."""
    if host is not None and host != host_tag():
        return True
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process
        return True
    return True


def scratch_folder(kind: str) -> tempfile.TemporaryDirectory:
    """A temporary folder named after this process (removed on exit, swept after a kill)."""
    return tempfile.TemporaryDirectory(prefix=f"florence2-{kind}-{os.getpid()}-")


def sweep_scratch(folder: str | Path | None = None) -> list[Path]:
    """Remove the scratch folders of dead exports in the temp dir (ours only: same user, our name
    pattern, the pid gone). Returns what was removed."""
    folder = Path(folder or tempfile.gettempdir())
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = _SCRATCH.match(path.name)
        if not match or not _ours(path) or alive(int(match.group(2))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed %d temporary folder(s) of interrupted exports from %s", len(removed), folder)
    return removed


def _ours(path: Path) -> bool:
    try:
        info = path.lstat()
    except OSError:
        return False
    return path.is_dir() and not path.is_symlink() and (not hasattr(os, "getuid") or info.st_uid == os.getuid())
