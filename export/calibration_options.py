"""`--calibration DIR|builtin` and `--calibration-count`, checked before any heavy import: a missing or
empty folder is refused in a second, not after the checkpoint has loaded. Torch-free (Pillow only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.images import is_image_file

from .errors import ExportError

BUILTIN = "builtin"
BUILTIN_COUNT = 8  # the generated sample images (runtime/probes.py): enough for activation ranges of a random model
DIR_COUNT = 32  # a user's folder: the first 32 images, sorted by name
CALIBRATED_TARGETS = ("onnx", "openvino")  # coreml int8 is weight-only (quantize/coreml.py)


@dataclass(frozen=True)
class CalibrationSet:
    """Where the calibration images come from: "builtin" (generated, deterministic) or "dir" (files)."""

    source: str  # "builtin" | "dir"
    count: int
    paths: tuple[Path, ...] = ()  # "dir": the image files, sorted, at most `count`

    def images(self) -> list:
        """The images as PIL images (files decoded as the runtime decodes them)."""
        if self.source == BUILTIN:
            from runtime.probes import CALIBRATION_SEED, sample_images

            return sample_images(self.count, first_seed=CALIBRATION_SEED)
        from runtime.errors import ImageError
        from runtime.images import load_image

        images = []
        for path in self.paths:  # a file that only looks like an image: named, one line, not a traceback
            try:
                images.append(load_image(path))
            except ImageError as err:
                raise ExportError(f"--calibration: {path}: {err}") from None
        return images


def check_calibration(value: str | None, count: int | None, target: str, precision: str | None) -> CalibrationSet | None:
    """The calibration set of `--calibration value`, or None without it; ExportError for a bad combination,
    a folder that does not exist or holds no images."""
    if value is None:
        if count is not None:
            raise ExportError("--calibration-count applies to --calibration; add --calibration DIR or builtin")
        return None
    if precision != "int8":
        raise ExportError("--calibration calibrates int8 activations: add --int8")
    if target not in CALIBRATED_TARGETS:
        raise ExportError(f"--calibration is for --target {' or '.join(CALIBRATED_TARGETS)}; {target} int8 is weight-only")
    if count is not None and count < 1:
        raise ExportError(f"--calibration-count must be at least 1, got {count}")
    if value == BUILTIN:
        return CalibrationSet(BUILTIN, count or BUILTIN_COUNT)
    folder = Path(value)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "no such folder"
        raise ExportError(f"--calibration {value}: {what} (give a folder of images, or 'builtin')")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    if not paths:
        raise ExportError(f"--calibration {value}: no image files in it (expected .jpg, .png, ...; or use 'builtin')")
    return CalibrationSet("dir", min(len(paths), count or DIR_COUNT), tuple(paths[:count or DIR_COUNT]))
