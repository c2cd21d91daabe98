"""The results file (`--output results.jsonl`): a header line, then one record per item, appended and
fsynced as each finishes, so a kill or a crash loses at most the items in flight.

    {"florence2_edge_results": 1, "tool": "florence2-edge 0.1.0", "artifact": "<manifest checksum>",
     "task": "<OCR>", "text": null, "options": {...generation options...}, "inputs": {"dpi": 200, ...}}
    {"image": "scans/a.png", "task": "<OCR>", "result": "...", "seconds": 0.41, "image_size": [640, 480],
     "source": {"size": 51234, "mtime_ns": 1733...}}
    {"image": "scans/b.png", "task": "<OCR>", "error": "cannot read image 'scans/b.png': ..."}

Resuming (the same command again) requires the header's artifact, task, text, generation options and
pixel options (dpi, EXIF rotation) to match: otherwise the answers would mix two jobs, and the run is
refused with what differs. It then skips every item with an answer whose name and `source` (file
size and modification time) match, and runs the rest: new items, changed files and failed items.
The file is first rewritten without error lines, stale answers and a torn last line (a run killed
mid-write), through a temporary file and a rename: each item then has one line, its latest.

Why size and mtime and not a content hash: hashing means reading every input again before the first
item runs (gigabytes of scans, minutes on a laptop, at each resume), while a changed scan or photo
gets a new size or mtime in practice; what they miss is a file rewritten with the same size and its
mtime set back by hand. Matching by name alone would keep answers of files that were replaced.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import JobError
from .lock import FileLock
from .outputs import write_atomic

HEADER_KEY = "florence2_edge_results"
RESULTS_FORMAT = 1
MATCHED = ("artifact", "task", "text", "options", "inputs")


def tool_version() -> str:
    from importlib import metadata

    try:
        return f"florence2-edge {metadata.version('florence2-edge')}"
    except metadata.PackageNotFoundError:
        return "florence2-edge (not installed)"


def make_header(artifact: str | None, task: str, text: str | None, options: dict, inputs: dict) -> dict:
    """The first line of a results file; `options` and `inputs` as JSON would give them back."""
    header = {HEADER_KEY: RESULTS_FORMAT, "tool": tool_version(), "artifact": artifact, "task": task, "text": text,
              "options": options, "inputs": inputs}
    return json.loads(json.dumps(header))


def header_differences(there: dict, here: dict) -> list[str]:
    """What differs between an existing header and this run's, as `field: X there, Y here`."""
    differences = []
    for key in MATCHED:
        a, b = there.get(key), here.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += [f"{key}.{k} {a.get(k)!r} there, {b.get(k)!r} here"
                            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            differences.append(f"{key} {a!r} there, {b!r} here")
    return differences


@dataclass
class Existing:
    header: dict
    records: list[dict]
    torn: bool  # the last line was cut off by a kill


def read_results(path: Path) -> Existing | None:
    """The results file at `path` (None if there is none, or it is empty); JobError if it is not one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise JobError(f"cannot read --output {path}: {err.strerror or err}") from None
    if not data:
        return None
    lines = data.split(b"\n")
    torn = lines[-1] != b""  # every line is written with its newline, in one write
    complete = lines[:-1]
    header = _parse(complete[0]) if complete else None
    if not isinstance(header, dict) or header.get(HEADER_KEY) != RESULTS_FORMAT:
        raise JobError(f"--output {path} exists and is not a results file of this tool (no results header on "
                       "its first line); choose another file")
    records = []
    for number, line in enumerate(complete[1:], start=2):
        record = _parse(line)
        if not (isinstance(record, dict) and isinstance(record.get("image"), str)
                and ("result" in record or "error" in record)):
            raise JobError(f"--output {path}: line {number} is not a result or error record; "
                           "fix or remove it, or use --restart")
        records.append(record)
    return Existing(header, records, torn)


def _parse(line: bytes):
    try:
        return json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None


class ResultsFile:
    """An open, locked results file. `done`: answered items that this run skips, name -> record."""

    def __init__(self, path: Path, lock: FileLock, done: dict[str, dict], repaired: bool, dropped: int):
        self.path, self._lock, self.done = path, lock, done
        self.repaired, self.dropped = repaired, dropped  # a torn line was removed; error/stale lines dropped
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND)

    @classmethod
    def open(cls, path: Path, header: dict, sources: dict[str, dict], restart: bool = False) -> ResultsFile:
        """Lock `path`, check it against `header`, keep the answers still valid for `sources`
        (item name -> source fingerprint), and open it for appending. JobError on any refusal."""
        if path.is_dir():
            raise JobError(f"--output expects a file; {path} is a folder")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise JobError(f"--output {path}: cannot create its folder ({err.strerror or err})") from None
        lock = FileLock(path.with_name(path.name + ".lock"))
        lock.acquire(path)
        try:
            done, repaired, dropped = _resume(path, header, sources, restart)
            return cls(path, lock, done, repaired, dropped)
        except OSError as err:
            lock.release()
            raise JobError(f"--output {path}: cannot write there ({err.strerror or err})") from None
        except BaseException:
            lock.release()
            raise

    def append(self, record: dict) -> None:
        """One record as one line, written in one call and fsynced before returning."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        while data:
            data = data[os.write(self._fd, data):]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._lock.release()


def _resume(path: Path, header: dict, sources: dict[str, dict], restart: bool) -> tuple[dict, bool, int]:
    existing = read_results(path)  # also with --restart: never overwrite a file that is not ours
    if existing is None or restart:
        _rewrite(path, header, [])
        return {}, False, 0
    differences = header_differences(existing.header, header)
    if differences:
        raise JobError(f"--output {path} holds results of another job ({'; '.join(differences)}); "
                       "use --restart to start over, or another --output")
    latest = {}
    for record in existing.records:  # one line per item after a rewrite; the last one wins regardless
        latest[record["image"]] = record
    kept = [r for r in latest.values()
            if "result" in r and (r["image"] not in sources or r.get("source") == sources[r["image"]])]
    dropped = len(existing.records) - len(kept)
    if dropped or existing.torn:
        _rewrite(path, existing.header, kept)
    done = {r["image"]: r for r in kept if r["image"] in sources}
    return done, existing.torn, dropped


def _rewrite(path: Path, header: dict, records: list[dict]) -> None:
    lines = [json.dumps(header, ensure_ascii=False)] + [json.dumps(r, ensure_ascii=False) for r in records]
    write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
