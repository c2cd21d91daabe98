"""Image loading: paths, PIL images and uint8 arrays in, fully decoded PIL images out.

Every failure is an `ImageError` with a one-line message. Images are fully decoded here, because
PIL opens lazily: a truncated file only fails on first pixel access, which would otherwise happen
deep inside preprocessing. No EXIF rotation is applied, as transformers applies none either.
What transformers does that a user may not expect is kept (preprocessing must match it bit for bit),
but said, as an `ImageWarning`: a 16-bit grayscale image is read as 8-bit with every value above 255
white; a multi-frame file (animated GIF, multi-page TIFF) is read as its first frame.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

# Errors PIL raises on broken data: OSError (truncated, decoder failure), SyntaxError and ValueError
# (some plugins on malformed headers), DecompressionBombError (absurd pixel counts).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_WIDE_MODES = ("I", "F")  # 32-bit int and float; "I;16*" are 16-bit


class ImageWarning(UserWarning):
    """An image is read the way transformers reads it, which may not be what its pixels mean."""


def is_image_file(path: str | os.PathLike) -> bool:
    """True if `path` has an image suffix (case-insensitive); used to pick files when scanning folders."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def load_image(source: str | os.PathLike | Image.Image | np.ndarray) -> Image.Image:
    """Return `source` as a fully decoded PIL image.

    Accepts a path (str or os.PathLike), a PIL image (returned as is, after decoding), or a uint8
    array of shape HxWx3 (RGB), HxWx4 (RGBA), HxW or HxWx1 (grayscale). The image keeps its mode:
    converting to RGB is the preprocessor's job, so that it matches transformers exactly. A file
    with several frames gives its first (with an ImageWarning); a PIL image gives its current frame
    (after `image.seek(n)`, frame n).
    """
    if isinstance(source, Image.Image):
        _decode(source, f"{source.mode} {source.width}x{source.height} PIL image")
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (str, os.PathLike)):
        return _open(Path(source))
    raise ImageError(f"expected an image path, PIL image or HxWx3 uint8 array; got {type(source).__name__}")


def load_image_bytes(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image:
    """An encoded image held in memory (an upload), fully decoded, through the same checks and messages
    as a file; `name` is how messages call it. `max_pixels` is checked from the header, before decoding."""
    if not data:
        raise ImageError(f"expected an image file; {name!r} is empty (0 bytes)")
    return _read(io.BytesIO(data), name, max_pixels)


def _open(path: Path) -> Image.Image:
    problem = path_problem(path)
    if problem:
        raise ImageError(f"expected an image file; {str(path)!r} {problem}")
    return _read(path, str(path))


def _read(source, name: str, max_pixels: int | None = None) -> Image.Image:
    try:
        # The context manager closes the file; the decoded pixels stay with the image object.
        with Image.open(source) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ImageError(f"image {name!r} is {image.width}x{image.height} pixels, over the limit of {max_pixels}")
            frames = getattr(image, "n_frames", 1)  # counted first: counting seeks, which undoes a decode
            _decode(image, repr(name))
            if frames > 1:
                warnings.warn(f"{name!r} has {frames} frames; only the first is used (to run the others, "
                              "open it with PIL and pass each frame after image.seek(n))", ImageWarning, stacklevel=4)
    except UnidentifiedImageError:
        raise ImageError(f"expected an image file; {name!r} is not an image PIL can read") from None
    except _DECODE_ERRORS as err:
        raise ImageError(f"cannot read image {name!r}: {_one_line(err)}") from None
    return image


def path_problem(path: Path) -> str | None:
    """What makes `path` no image file, before PIL sees it (a FIFO would block it forever)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return f"is a broken symbolic link (to {os.readlink(path)!r})" if path.is_symlink() else "does not exist"
    except OSError as err:
        return "is a symbolic link loop" if err.errno == errno.ELOOP else f"cannot be read ({err.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_size == 0:
        return "is empty (0 bytes)"
    return None


def _decode(image: Image.Image, name: str) -> None:
    """Force a full decode so that truncated or corrupt data fails here, not mid-pipeline.

    PIL raises on truncation unless the process opted in to `ImageFile.LOAD_TRUNCATED_IMAGES`; we
    honour that global switch rather than flip it, since it belongs to whoever set it.
    """
    try:
        image.load()
    except _DECODE_ERRORS as err:
        raise ImageError(f"cannot decode image {name}: {_one_line(err)}") from None
    if image.width < 1 or image.height < 1:
        raise ImageError(f"expected an image of at least 1x1 pixels; {name} is {image.width}x{image.height}")
    if image.mode in _WIDE_MODES or image.mode.startswith("I;16"):
        low, high = image.getextrema()
        if high > 255:
            warnings.warn(f"{name} is a {image.mode} image with values up to {high:g}; like transformers, it is read "
                          "as 8-bit and every value above 255 is white: convert it to 8-bit first "
                          "(e.g. scale by 255/65535)", ImageWarning, stacklevel=4)


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
