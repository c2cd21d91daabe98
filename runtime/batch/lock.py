"""One writer per results file: an advisory lock on `<results>.lock`, held for the whole run.

The operating system drops the lock when its process dies (kill -9, a crash, a closed lid that ends
in a reboot), so a lock left by a dead run never blocks the next one. The lock file holds the pid of
its owner, for the refusal message. POSIX: flock; Windows: msvcrt.locking.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import JobError


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class FileLock:
    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self, what: Path) -> None:
        """Take the lock, or raise JobError naming the run that holds it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise JobError(f"cannot create {self.path}: {err.strerror or err}") from None
            if not _try_lock(fd):
                owner = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise JobError(f"another run is writing {what} (its lock {self.path} is held by pid {owner}); "
                               "wait for it, or choose another --output")
            # The previous owner may have removed the file between our open and our lock: then we hold
            # a lock on a name nobody else sees, and must take the new file instead.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if sys.platform == "win32":  # an open file cannot be removed there
            os.close(fd)
            _remove(self.path)
        else:
            _remove(self.path)  # while still holding the lock: no one can have taken it in between
            os.close(fd)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # a lock file left behind blocks nothing: the lock is on the open file, not the name
