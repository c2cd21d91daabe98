"""Side files of a batch job: plain text (--text-dir), annotated images (--annotate) and searchable PDFs
(--searchable-pdf), each written to a hidden temporary name in its folder and renamed into place, so a
kill never leaves a half file under a final name.

Names follow the item, keeping the source's suffix, under the same subfolders as the input:

    scans/sub/a.jpg            -> OUT/sub/a.jpg.png   OUT/sub/a.jpg.txt   OUT/sub/a.jpg.pdf
    scans/sub/a.png            -> OUT/sub/a.png.png   ...                 (a.jpg and a.png stay apart)
    report.pdf#page=3          -> OUT/report.pdf.page-3.png   OUT/report.pdf.page-3.txt   OUT/report.pdf
    stack.tif#frame=2          -> OUT/stack.tif.frame-2.png   ...

Two inputs with the same relative path (x/a.jpg and y/a.jpg given as x/ and y/) get `a-2.jpg...` for
the second, decided from the scan, so a resumed run picks the same names. Every record names the
files written for it (`files`).

An output folder must be new, empty, or one this tool wrote before (it holds `OUTPUT_MARKER`): this
tool never overwrites files it did not write. Temporary files left by a killed run are removed at
the next start.
"""

from __future__ import annotations

import io
import os
from pathlib import Path, PurePosixPath

from .errors import JobError
from .items import OUTPUT_MARKER, Item

_PARTIAL = ".partial"


def write_atomic(path: Path, data: bytes) -> None:
    """`data` to `path` through a hidden temporary file in the same folder, fsynced, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}{_PARTIAL}")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            temporary.unlink()
        except OSError:
            pass
        raise


def prepare_folder(folder: Path, option: str) -> None:
    """Make `folder` ours: create it (and its marker), or accept it if empty or marked. JobError otherwise."""
    if folder.exists() and not folder.is_dir():
        raise JobError(f"{option} expects a folder; {folder} is a file")
    if folder.is_dir() and not (folder / OUTPUT_MARKER).exists() and any(folder.iterdir()):
        raise JobError(f"{option} {folder} holds files this tool did not write; choose a new or empty folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / OUTPUT_MARKER).write_text("Outputs of florence2-edge (python -m runtime). This folder is not "
                                            "scanned as input.\n")
    except OSError as err:
        raise JobError(f"{option} {folder}: cannot write there ({err.strerror or err})") from None
    for root, _, names in os.walk(folder):
        for name in names:
            if name.startswith(".") and name.endswith(_PARTIAL):  # ours, from a run killed mid-write
                try:
                    os.unlink(os.path.join(root, name))
                except OSError:
                    pass


def plan_names(items: list[Item]) -> dict[str, str]:
    """file path -> its relative output name, unique across the job, in scan order."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for item in items:
        if item.path in names:
            continue
        relative = PurePosixPath(item.relative)
        candidate, count = str(relative), 1
        while candidate.lower() in used:  # lower(): case-insensitive file systems (macOS, Windows)
            count += 1
            candidate = str(relative.with_name(f"{relative.stem}-{count}{relative.suffix}"))
        used.add(candidate.lower())
        names[item.path] = candidate
    return names


def stem(item: Item, names: dict[str, str]) -> str:
    base = names[item.path]
    if item.page is not None:
        return f"{base}.page-{item.page}"
    if item.frame is not None:
        return f"{base}.frame-{item.frame}"
    return base


def plain_text(answer) -> str | None:
    """The text of an OCR answer (a string, or the lines of quad-box OCR); None for other answers."""
    if isinstance(answer, str):
        return answer
    if isinstance(answer, dict) and "quad_boxes" in answer:
        return "\n".join(label.strip() for label in answer.get("labels", []))
    return None


class Outputs:
    """Writes an item's side files; returns their paths for its record."""

    def __init__(self, items: list[Item], annotate: Path | None = None, text: Path | None = None,
                 searchable: Path | None = None, dpi: float = 200.0):
        self.annotate_dir, self.text_dir, self.pdf_dir, self.dpi = annotate, text, searchable, dpi
        self.names = plan_names(items)
        self.documents = _Documents(items)

    @property
    def needs_image(self) -> bool:
        """Whether items must keep their decoded image until their outputs are written."""
        return self.annotate_dir is not None or self.pdf_dir is not None

    def prepare(self) -> None:
        for folder, option in ((self.annotate_dir, "--annotate"), (self.text_dir, "--text-dir"),
                               (self.pdf_dir, "--searchable-pdf")):
            if folder is not None:
                prepare_folder(folder, option)

    def remember(self, record: dict, item: Item) -> None:
        """An item answered by an earlier run: its answer still counts for its PDF's searchable copy."""
        self.documents.settle(item, record.get("result"), record.get("image_size"))

    def write(self, item: Item, answer, image, image_size) -> list[str]:
        """Side files of an answered item (`image`: what the model saw, or None if not kept)."""
        written = []
        name = stem(item, self.names)
        if self.text_dir is not None:
            text = plain_text(answer)
            if text is not None:
                written.append(self._put(self.text_dir / f"{name}.txt", (text + "\n").encode("utf-8")))
        if self.annotate_dir is not None and image is not None:
            from ..annotate import annotate

            buffer = io.BytesIO()
            annotate(image, answer).save(buffer, format="PNG")
            written.append(self._put(self.annotate_dir / f"{name}.png", buffer.getvalue()))
        if self.pdf_dir is not None and item.page is None and image is not None and item.problem is None:
            from .searchable import image_pdf

            written.append(self._put(self.pdf_dir / f"{name}.pdf", image_pdf(image, answer, self.dpi)))
        written.extend(self.settle(item, answer, image_size))
        return written

    def settle(self, item: Item, answer, image_size) -> list[str]:
        """Note a PDF page as done (answer None: failed); once its whole PDF is, write its searchable copy."""
        if self.pdf_dir is None or item.page is None or not self.documents.settle(item, answer, image_size):
            return []
        from .searchable import document_pdf

        data = document_pdf(item.path, self.documents.answers(item.path))
        return [self._put(self.pdf_dir / self.names[item.path], data)]

    @staticmethod
    def _put(path: Path, data: bytes) -> str:
        write_atomic(path, data)
        return str(path)


class _Documents:
    """Which pages of each input PDF have run, and their answers."""

    def __init__(self, items: list[Item]):
        self.pages = {item.path: item.pages for item in items if item.page is not None}
        self.done: dict[str, dict[int, tuple | None]] = {path: {} for path in self.pages}

    def settle(self, item: Item, answer, image_size) -> bool:
        """True when this completes its PDF."""
        if item.page is None or item.path not in self.pages:
            return False
        pages = self.done[item.path]
        pages[item.page] = None if answer is None or image_size is None else (answer, tuple(image_size))
        return len(pages) == self.pages[item.path]

    def answers(self, path: str) -> dict[int, tuple]:
        return {page: entry for page, entry in self.done[path].items() if entry is not None}
