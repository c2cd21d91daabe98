"""Image loading: paths, PIL images and uint8 arrays in, fully decoded PIL images out.

Every failure is an `ImageError` with a one-line message. Images are fully decoded here, because
PIL opens lazily: a truncated file only fails on first pixel access, which would otherwise happen
deep inside preprocessing. No EXIF rotation is applied, as transformers applies none either.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

# Errors PIL raises on broken data: OSError (truncated, decoder failure), SyntaxError and ValueError
# (some plugins on malformed headers), DecompressionBombError (absurd pixel counts).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def is_image_file(path: str | os.PathLike) -> bool:
    """True if `path` has an image suffix (case-insensitive); used to pick files when scanning folders."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def load_image(source: str | os.PathLike | Image.Image | np.ndarray) -> Image.Image:
    """Return `source` as a fully decoded PIL image.

    Accepts a path (str or os.PathLike), a PIL image (returned as is, after decoding), or a uint8
    array of shape HxWx3 (RGB), HxWx4 (RGBA), HxW or HxWx1 (grayscale). The image keeps its mode:
    converting to RGB is the preprocessor's job, so that it matches transformers exactly.
    """
    if isinstance(source, Image.Image):
        _decode(source, f"{source.mode} {source.width}x{source.height} PIL image")
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (str, os.PathLike)):
        return _open(Path(source))
    raise ImageError(f"expected an image path, PIL image or HxWx3 uint8 array; got {type(source).__name__}")


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageError(f"expected an image file; {str(path)!r} does not exist")
    if path.is_dir():
        raise ImageError(f"expected an image file; {str(path)!r} is a directory")
    if path.stat().st_size == 0:
        raise ImageError(f"expected an image file; {str(path)!r} is empty (0 bytes)")
    try:
        # The context manager closes the file; the decoded pixels stay with the image object.
        with Image.open(path) as image:
            _decode(image, repr(str(path)))
    except UnidentifiedImageError:
        raise ImageError(f"expected an image file; {str(path)!r} is not an image PIL can read") from None
    except _DECODE_ERRORS as err:
        raise ImageError(f"cannot read image {str(path)!r}: {_one_line(err)}") from None
    return image


def _decode(image: Image.Image, name: str) -> None:
    """Force a full decode so that truncated or corrupt data fails here, not mid-pipeline.

    PIL raises on truncation unless the process opted in to `ImageFile.LOAD_TRUNCATED_IMAGES`; we
    honour that global switch rather than flip it, since it belongs to whoever set it.
    """
    try:
        image.load()
    except _DECODE_ERRORS as err:
        raise ImageError(f"cannot decode image {name}: {_one_line(err)}") from None


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise ImageError(f"expected an HxWx3 uint8 array; got dtype {array.dtype} with shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    channels_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if not channels_ok or 0 in array.shape:
        raise ImageError(f"expected an HxWx3 uint8 array (or HxW, HxWx4); got shape {array.shape}")
    # fromarray picks L / RGB / RGBA from the shape. An RGBA array is later composited onto white by
    # PIL; that equals transformers' numpy compositing for every (value, alpha) pair (checked in tests).
    return Image.fromarray(np.ascontiguousarray(array))


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
