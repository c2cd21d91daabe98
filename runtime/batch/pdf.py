"""PDF pages as images, rendered by pypdfium2 (the `pdf` extra: `pip install 'florence2-edge[pdf]'`).

pdfium is not thread-safe, so every call into it holds one process-wide lock: the prefetch threads
render one page at a time, while decoding other images and inference go on beside them.
A page's pixel count is known before rendering (its size in points x dpi / 72), so a page too large
for `max_pixels` fails alone, before any memory is spent on it.
"""

from __future__ import annotations

import contextlib
import math
import threading

from PIL import Image

from ..errors import ImageError
from .errors import JobError

POINTS_PER_INCH = 72
_LOCK = threading.Lock()


def _pdfium():
    try:
        import pypdfium2
    except ImportError:
        raise JobError("PDF input needs pypdfium2: pip install 'florence2-edge[pdf]'") from None
    return pypdfium2


@contextlib.contextmanager
def _document(path: str):
    pdfium = _pdfium()
    with _LOCK:
        try:
            document = pdfium.PdfDocument(path)
        except pdfium.PdfiumError:
            raise ImageError(f"cannot open PDF {path!r}: {_why_not(path)}") from None
        except OSError as err:
            raise ImageError(f"cannot read PDF {path!r}: {err.strerror or err}") from None
        try:
            yield document
        finally:
            document.close()


def _why_not(path: str) -> str:
    """Why pdfium refused `path`. Not from pdfium's error code: it is left over from an earlier failure
    when the parse itself succeeds (a PDF without pages), so the file is looked at instead."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        return err.strerror or str(err)
    if b"%PDF-" not in data[:1024]:  # readers accept the header anywhere in the first 1 KB
        return "not a PDF (no %PDF- header)"
    if b"/Encrypt" in data:
        return "it is encrypted (password-protected)"
    return "damaged, truncated or without pages"


def page_count(path: str) -> int:
    """Pages of the PDF at `path`; ImageError if it cannot be opened or has none."""
    with _document(path) as document:
        count = len(document)
    if count == 0:
        raise ImageError(f"PDF {path!r} has no pages")
    return count


def pixel_size(width_pt: float, height_pt: float, dpi: float) -> tuple[int, int]:
    """The rendered size of a page of `width_pt` x `height_pt` points, as pypdfium2 sizes its bitmap."""
    scale = dpi / POINTS_PER_INCH
    return math.ceil(width_pt * scale), math.ceil(height_pt * scale)


def render_page(path: str, page: int, dpi: float, max_pixels: int) -> Image.Image:
    """Page `page` (1-based) of `path` at `dpi`, as an RGB image, page rotation applied."""
    with _document(path) as document:
        if page > len(document):
            raise ImageError(f"PDF {path!r} now has {len(document)} pages; page {page} is gone")
        handle = document[page - 1]
        try:
            width, height = pixel_size(*handle.get_size(), dpi)
            if width * height > max_pixels:
                raise ImageError(f"page {page} of {path!r} is {width}x{height} pixels at {dpi:g} dpi, over the "
                                 f"limit of {max_pixels} (--max-pixels, or a lower --dpi)")
            bitmap = handle.render(scale=dpi / POINTS_PER_INCH)
            # A copy: the bitmap's buffer is freed with it, after the lock is released.
            return bitmap.to_pil().convert("RGB")
        finally:
            handle.close()
