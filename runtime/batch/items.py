"""Inputs -> items: the unit the batch job runs, names in results and resumes by.

    photo.jpg              an image file: one item, named as given
    scans/                 a folder: its image and PDF files, sorted by name (--recursive: subfolders too)
    report.pdf             a PDF: one item per page, `report.pdf#page=1` ... (pages count from 1)
    stack.tif              a multi-page TIFF: one item per frame, `stack.tif#frame=1` ...

Hidden files and folders (a leading dot) are skipped and counted, so are files that are neither
images nor PDFs, and folders holding this tool's own outputs (they carry `OUTPUT_MARKER`). A file
named on the command line is always taken: if it is not an image, its item fails with one line.

Each item carries its file's size and modification time (`source`): resuming matches an item by its
name and these (results.py says why not by content hash). A PDF that cannot be opened (corrupt,
encrypted, no pages) is one item that fails; the others run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import ImageError
from ..images import is_image_file, path_problem
from .errors import JobError

PDF_SUFFIX = ".pdf"
TIFF_SUFFIXES = (".tif", ".tiff")
# A folder holding this file holds this tool's outputs: never scanned as input, written into freely.
OUTPUT_MARKER = ".florence2-edge-output"


@dataclass(frozen=True)
class Item:
    name: str  # as the results name it: "scans/a.png", "report.pdf#page=3", "stack.tif#frame=2"
    path: str  # the file it comes from
    relative: str  # the file's path under its input (a folder argument) or its file name: output names
    page: int | None = None  # 1-based PDF page
    frame: int | None = None  # 1-based TIFF frame
    pages: int = 1  # pages of its PDF (searchable output is written once all have run)
    source: dict = field(default_factory=dict)  # {"size": bytes, "mtime_ns": int} of the file at scan time
    problem: str | None = None  # known unreadable at scan time: its line is this error

    def to_dict(self) -> dict:
        """A plain dict (for Ray Data rows); `Item(**d)` rebuilds it."""
        return {"name": self.name, "path": self.path, "relative": self.relative, "page": self.page,
                "frame": self.frame, "pages": self.pages, "source": dict(self.source), "problem": self.problem}


@dataclass(frozen=True)
class Scan:
    items: list[Item]
    hidden: int = 0  # hidden files and folders skipped
    other: int = 0  # files that are neither images nor PDFs, skipped


def scan(inputs: list[str], recursive: bool = False) -> Scan:
    """The items of `inputs`, in order, each name once. A missing input is a JobError (nothing runs)."""
    files, hidden, other = [], 0, 0
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found, skipped_hidden, skipped_other = _walk(path, recursive)
            hidden, other = hidden + skipped_hidden, other + skipped_other
            files.extend((str(p), p.relative_to(path).as_posix()) for p in found)
        elif path.exists():
            files.append((name, path.name))
        elif path.is_symlink():  # exists() follows links: a dangling link or a loop is said as such
            raise JobError(f"expected an image, PDF or folder; {name!r} {path_problem(path)}")
        else:
            raise JobError(f"no such file or folder: {name}")
    items, seen = [], set()
    for file, relative in files:
        for item in _expand(file, relative):
            if item.name not in seen:  # a file named twice (directly and through its folder) runs once
                seen.add(item.name)
                items.append(item)
    if not items:
        raise JobError(f"no image or PDF files in {', '.join(inputs)}")
    return Scan(items, hidden, other)


def _walk(folder: Path, recursive: bool) -> tuple[list[Path], int, int]:
    """(image and PDF files under `folder` sorted by path, hidden skipped, others skipped)."""
    found, hidden, other = [], 0, 0
    for root, dirs, names in os.walk(folder):
        if OUTPUT_MARKER in names:
            dirs[:] = []
            continue
        hidden += sum(d.startswith(".") for d in dirs) + sum(n.startswith(".") for n in names)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in names:
            path = Path(root) / name
            if name.startswith(".") or not path.is_file():
                continue
            if is_image_file(path) or path.suffix.lower() == PDF_SUFFIX:
                found.append(path)
            else:
                other += 1
    return sorted(found, key=lambda p: p.relative_to(folder).parts), hidden, other


def fingerprint(path: str) -> dict:
    """What resuming compares: size and modification time (ns); {} for a file that cannot be stat'ed."""
    try:
        stat = os.stat(path)
    except OSError:
        return {}
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _expand(file: str, relative: str) -> list[Item]:
    source = fingerprint(file)
    problem = path_problem(Path(file))
    if problem is not None:  # checked before any open: a FIFO named like an image would block PIL forever
        return [Item(file, file, relative, source=source, problem=f"expected an image file; {file!r} {problem}")]
    suffix = Path(file).suffix.lower()
    if suffix == PDF_SUFFIX:
        from .pdf import page_count

        try:
            count = page_count(file)
        except ImageError as err:  # one bad PDF is one failed item; a missing extra (JobError) stops the job
            return [Item(file, file, relative, source=source, problem=str(err))]
        return [Item(f"{file}#page={n}", file, relative, page=n, pages=count, source=source)
                for n in range(1, count + 1)]
    if suffix in TIFF_SUFFIXES:
        frames = _tiff_frames(file)
        if frames > 1:
            return [Item(f"{file}#frame={n}", file, relative, frame=n, source=source) for n in range(1, frames + 1)]
    return [Item(file, file, relative, source=source)]


def _tiff_frames(file: str) -> int:
    """Frames of a TIFF; 1 when it cannot be read (loading the item then says why)."""
    try:
        with Image.open(file) as image:
            return max(1, int(getattr(image, "n_frames", 1)))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 1
