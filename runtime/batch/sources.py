"""An item -> its decoded image: image files through `runtime.images.load_image`, PDF pages through
pdf.py, TIFF frames here. Every failure is an `ImageError` with one line; the job turns it into the
item's error line and goes on.

The pixel limit is checked from the header, before decoding: a 20,000 x 20,000 scan fails alone
instead of taking 1.2 GB. EXIF orientation is ignored unless asked for (`exif_transpose`), because
transformers ignores it: the default keeps results identical to `model(path)` and to transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from ..images import load_image
from .items import Item

# PIL's own limit (twice Image.MAX_IMAGE_PIXELS) stays in force above this one.
DEFAULT_MAX_PIXELS = 100_000_000
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class SourceOptions:
    """How items become pixels; dpi and exif_transpose change the pixels, so resuming compares them."""

    dpi: float = 200.0
    exif_transpose: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS

    def pixel_options(self) -> dict:
        """What a results header records of these (max_pixels only decides which items fail)."""
        return {"dpi": self.dpi, "exif_transpose": self.exif_transpose}


def load_item(item: Item, options: SourceOptions) -> Image.Image:
    """The item's image, fully decoded (and EXIF-rotated if asked)."""
    if item.problem is not None:
        raise ImageError(item.problem)
    if item.page is not None:
        from .pdf import render_page

        image = render_page(item.path, item.page, options.dpi, options.max_pixels)
    elif item.frame is not None:
        image = _tiff_frame(item.path, item.frame, options.max_pixels)
    else:
        _check_pixels(item.path, options.max_pixels)
        image = load_image(item.path)
    return ImageOps.exif_transpose(image) if options.exif_transpose else image


def _check_pixels(path: str, max_pixels: int) -> None:
    """Refuse an image whose header says it is over `max_pixels`; anything else is load_image's to judge."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, *_DECODE_ERRORS):
        return  # not readable: load_image says why, in its words
    if width * height > max_pixels:
        raise ImageError(f"image {path!r} is {width}x{height} pixels, over the limit of {max_pixels} (--max-pixels)")


def _tiff_frame(path: str, frame: int, max_pixels: int) -> Image.Image:
    try:
        with Image.open(path) as image:
            if frame > getattr(image, "n_frames", 1):
                raise ImageError(f"TIFF {path!r} now has {image.n_frames} frames; frame {frame} is gone")
            image.seek(frame - 1)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"frame {frame} of {path!r} is {width}x{height} pixels, over the limit of "
                                 f"{max_pixels} (--max-pixels)")
            image.load()
            return image.copy()  # the frame's pixels, detached from the file being closed
    except FileNotFoundError:
        raise ImageError(f"expected an image file; {path!r} does not exist") from None
    except UnidentifiedImageError:
        raise ImageError(f"expected an image file; {path!r} is not an image PIL can read") from None
    except _DECODE_ERRORS as err:
        raise ImageError(f"cannot read frame {frame} of {path!r}: {' '.join(str(err).split())}") from None
