"""Progress on stderr, never on stdout (which may carry the JSON lines), and the summary line.

On a terminal with tqdm installed (the `progress` extra): a bar with items done / total, rate and
ETA. Otherwise (no tqdm, or stderr a file or pipe with --progress): a plain status line every
`interval` seconds,

    runtime: 120/250 items (48%), 3 failed, 41.2 items/min, ETA 3m09s

Messages (errors of single items) go through `note`, so they never break the bar.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

PROG = "runtime"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    def __init__(self, total: int, enabled: bool, stream=None, interval: float = 5.0):
        self.total, self.enabled, self.interval = total, enabled, interval
        self.stream = stream if stream is not None else sys.stderr
        self.done = self.failed = 0
        self._began = self._last = time.monotonic()
        self._bar = self._make_bar() if enabled else None

    def _make_bar(self):
        if not (hasattr(self.stream, "isatty") and self.stream.isatty()):
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=self.total, file=self.stream, unit="item", dynamic_ncols=True, desc=PROG, smoothing=0.05)

    def update(self, failed: bool = False) -> None:
        self.done += 1
        self.failed += failed
        if self._bar is not None:
            self._bar.update(1)
            if failed:
                self._bar.set_postfix(failed=self.failed, refresh=False)
        elif self.enabled and time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            print(self.status_line(), file=self.stream, flush=True)

    def status_line(self) -> str:
        elapsed = max(time.monotonic() - self._began, 1e-9)
        rate = self.done / elapsed * 60
        left = (self.total - self.done) / (self.done / elapsed) if self.done else None
        share = f" ({100 * self.done // self.total}%)" if self.total else ""
        eta = f", ETA {_duration(left)}" if left is not None else ""
        return f"{PROG}: {self.done}/{self.total} items{share}, {self.failed} failed, {rate:.1f} items/min{eta}"

    def note(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@dataclass
class Summary:
    items: int = 0  # items of the job
    answered: int = 0
    skipped: int = 0  # answered by an earlier run, skipped now
    failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    hidden: int = 0  # hidden files skipped by the scan
    other: int = 0  # files that are neither images nor PDFs, skipped by the scan

    def line(self) -> str:
        ran = self.answered + self.failed
        rate = ran / self.seconds * 60 if self.seconds > 0 else 0.0
        text = (f"{PROG}: {self.items} items: {self.answered} answered, {self.skipped} skipped (already done), "
                f"{self.failed} failed in {self.seconds:.1f} s ({rate:.1f} items/min)")
        if self.hidden or self.other:
            text += f"; files not taken: {self.hidden} hidden, {self.other} neither image nor PDF"
        if self.interrupted:
            left = self.items - ran - self.skipped
            text += f"; interrupted, {left} not run: run the same command again to resume"
        return text
