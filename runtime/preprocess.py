"""Image preprocessing that reproduces transformers' PIL path bit for bit.

The reference is `CLIPImageProcessorPil` (transformers 5.23, `PilBackend`), which Florence-2 uses:

1. convert to RGB (`image_transforms.convert_to_rgb`): images with an alpha band or a
   `transparency` entry are composited onto opaque white with `Image.alpha_composite`, others go
   through `Image.convert("RGB")`;
2. `Image.resize((width, height), resample)` on the uint8 RGB image, aspect ratio not kept;
3. rescale in float64 (`uint8.astype(float64) * rescale_factor`), then cast to float32;
4. normalize in float32: `(x - mean) / std` with float32 mean and std. Not fused with step 3.

Steps 3-4 map each uint8 value of a channel to one float32, so they are done with a 3x256 lookup
table built with exactly those operations: same bits, one gather per pixel.

`do_convert_rgb: null`, which real Florence-2 checkpoints ship, makes transformers skip step 1;
it then raises on 1-, 2- and 4-band images (the channel count no longer matches the mean) and
feeds 3-band ones (YCbCr, LAB, HSV) as if they were RGB. Here null keeps RGB images untouched, as
transformers does, and converts every other mode as step 1 does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from .errors import ArtifactError, ImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FLAGS = ("do_resize", "do_rescale", "do_normalize")
_REQUIRED_KEYS = ("size", "resample", *_FLAGS, "rescale_factor", "image_mean", "image_std")
# Each value and the flag of the step that uses it.
_VALUE_FLAGS = (
    ("resample", "do_resize"),
    ("rescale_factor", "do_rescale"),
    ("image_mean", "do_normalize"),
    ("image_std", "do_normalize"),
)
_RESAMPLE_FILTERS = {int(f): f.name for f in Image.Resampling}  # 0..5: NEAREST ... HAMMING


@dataclass(frozen=True)
class Preprocessor:
    """Turns PIL images into `pixel_values`: float32 [B, 3, height, width].

    Defaults are Florence-2's `preprocessor_config.json`. `do_convert_rgb` is tri-state like the
    checkpoint's: True converts every image, False requires RGB images, None (the checkpoint's
    value) converts every image that is not RGB already.
    """

    height: int = 768
    width: int = 768
    resample: int = int(Image.Resampling.BICUBIC)
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    do_convert_rgb: bool | None = None

    def __post_init__(self) -> None:
        # Store mean/std as tuples of 3 floats, so that instances stay hashable and comparable.
        object.__setattr__(self, "image_mean", _three_floats("image_mean", self.image_mean))
        object.__setattr__(self, "image_std", _three_floats("image_std", self.image_std))
        _verify(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Preprocessor:
        """Build from a checkpoint's preprocessor_config.json dict, reading nulls as transformers does.

        Keys that do not change the pixels (image_processor_type, image_seq_length, ...) are ignored.
        The pixel-affecting keys are required: where one is missing, transformers would fall back to
        CLIP's defaults (224 px, CLIP mean/std), not Florence-2's, so guessing would be wrong.
        """
        _check_config(config)
        # transformers keeps a null as None: a null flag is false, a null value is refused when
        # its step is on, and unused when it is off.
        kwargs: dict[str, Any] = {flag: False if config[flag] is None else config[flag] for flag in _FLAGS}
        # Absent means CLIPImageProcessor's default (True); null is its own case (module docstring).
        kwargs["do_convert_rgb"] = config.get("do_convert_rgb", True)
        for key, flag in _VALUE_FLAGS:
            if config[key] is not None:
                kwargs[key] = config[key]
            elif kwargs[flag]:
                raise ArtifactError(f"expected a value for {key} since {flag} is true; got null")
        size = config["size"]
        if kwargs["do_resize"]:
            if not isinstance(size, dict) or set(size) != {"height", "width"}:
                raise ArtifactError(f"expected preprocessor size {{'height': H, 'width': W}}; got {size!r}")
            kwargs["height"], kwargs["width"] = size["height"], size["width"]
        return cls(**kwargs)

    def to_config(self) -> dict[str, Any]:
        """The preprocessor_config.json keys this preprocessor honours; from_config round-trips it."""
        return {
            "size": {"height": self.height, "width": self.width},
            "resample": self.resample,
            "do_resize": self.do_resize,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_convert_rgb": self.do_convert_rgb,
            "do_center_crop": False,
        }

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Preprocess a batch of PIL images (see `runtime.images.load_image`) to float32 [B, 3, H, W]."""
        if not isinstance(images, (list, tuple)) or not images:
            raise ImageError(f"expected a non-empty list of PIL images; got {_describe(images)}")
        pixels = [self._rgb_resized(image, index) for index, image in enumerate(images)]
        shapes = {p.shape for p in pixels}
        if len(shapes) > 1:  # only possible with do_resize false
            raise ImageError(f"expected images of one size to batch without resizing; got shapes {sorted(shapes)}")
        height, width, _ = pixels[0].shape
        table = self.lookup_table()
        batch = np.empty((len(pixels), 3, height, width), dtype=np.float32)
        for out, rgb in zip(batch, pixels):
            for channel in range(3):
                out[channel] = table[channel][rgb[:, :, channel]]
        return batch

    def resized(self, image: Image.Image) -> np.ndarray:
        """uint8 [height, width, 3]: the image after RGB conversion and resize, before rescale and
        normalize (what the conformance vectors store, so a port can test the rest of its path exactly)."""
        return self._rgb_resized(image, 0)

    def lookup_table(self) -> np.ndarray:
        """float32 [3, 256]: the rescaled and normalized value of each uint8 level, per channel.

        Built with transformers' exact operations and dtypes, so gathering from it is bit-identical
        to running them per pixel.
        """
        levels = np.arange(256, dtype=np.uint8)[None, :].repeat(3, axis=0)
        if self.do_rescale:
            values = (levels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            values = levels.astype(np.float32)  # normalize() casts integer input to float32
        if self.do_normalize:
            mean = np.array(self.image_mean, dtype=np.float32)[:, None]
            std = np.array(self.image_std, dtype=np.float32)[:, None]
            values = (values - mean) / std
        return values

    def _rgb_resized(self, image: Image.Image, index: int) -> np.ndarray:
        """uint8 HxWx3 after RGB conversion and resize."""
        if not isinstance(image, Image.Image):
            raise ImageError(f"expected PIL images (see load_image); got {_describe(image)} at index {index}")
        if image.mode != "RGB" or self.do_convert_rgb:
            if self.do_convert_rgb is False:
                raise ImageError(
                    f"expected an RGB image since do_convert_rgb is false; got mode {image.mode} at index {index}"
                )
            image = convert_rgb(image)
        if self.do_resize:
            image = image.resize((self.width, self.height), resample=Image.Resampling(self.resample))
        return np.asarray(image)


def convert_rgb(image: Image.Image) -> Image.Image:
    """transformers' `convert_to_rgb` for PIL images: transparency is composited onto white."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _verify(p: Preprocessor) -> None:
    """The one place options are checked; a bad value means a bad artifact, hence ArtifactError."""
    for name in ("height", "width"):
        value = getattr(p, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArtifactError(f"expected preprocessor {name} to be a positive int; got {value!r}")
    if p.resample not in _RESAMPLE_FILTERS:
        raise ArtifactError(f"expected resample in {_RESAMPLE_FILTERS}; got {p.resample!r}")
    for name in _FLAGS:
        if not isinstance(getattr(p, name), bool):
            raise ArtifactError(f"expected {name} to be true or false; got {getattr(p, name)!r}")
    if p.do_convert_rgb not in (True, False, None):
        raise ArtifactError(f"expected do_convert_rgb to be true, false or null; got {p.do_convert_rgb!r}")
    factor = p.rescale_factor
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise ArtifactError(f"expected rescale_factor to be a positive number; got {factor!r}")
    if 0 in p.image_std:
        raise ArtifactError(f"expected a non-zero image_std; got {p.image_std!r}")


def _three_floats(name: str, value: Any) -> tuple[float, float, float]:
    """A per-channel mean or std; a scalar applies to all three channels, as in transformers."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * 3
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise ArtifactError(f"expected {name} to be 3 finite numbers (R, G, B); got {value!r}")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _check_config(config: dict[str, Any]) -> None:
    """Fail on a config that lacks pixel-affecting keys or asks for steps this module does not do."""
    if not isinstance(config, dict):
        raise ArtifactError(f"expected the preprocessor config to be a JSON object; got {_describe(config)}")
    missing = [key for key in _REQUIRED_KEYS if key not in config]
    if missing:
        raise ArtifactError(f"expected preprocessor config keys {list(_REQUIRED_KEYS)}; missing {missing}")
    if config.get("do_pad"):
        raise ArtifactError("expected do_pad false: padding is not supported; got do_pad true")
    if config.get("do_center_crop"):
        size, crop = config.get("size"), config.get("crop_size")
        # Cropping to the size just resized to is the identity, so that combination is accepted.
        if not (config["do_resize"] and crop == size and crop is not None):
            raise ArtifactError(
                f"expected do_center_crop false (or crop_size equal to size); got crop_size {crop!r}, size {size!r}"
            )


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} with shape {tuple(shape)}" if shape is not None else type(value).__name__
