"""runtime.images and runtime.preprocess: bit-identical to transformers' CLIPImageProcessorPil."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.errors import ArtifactError, Florence2Error, ImageError
from runtime.images import is_image_file, load_image
from runtime.preprocess import Preprocessor

# Florence-2-base's preprocessor_config.json, verbatim.
FLORENCE2_CONFIG = {
    "crop_size": {"height": 768, "width": 768},
    "do_center_crop": False,
    "do_convert_rgb": None,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "CLIPImageProcessor",
    "image_seq_length": 577,
    "image_std": [0.229, 0.224, 0.225],
    "processor_class": "Florence2Processor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 768, "width": 768},
}
CONVERTING_CONFIG = {**FLORENCE2_CONFIG, "do_convert_rgb": True}


def _reference(config, images):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**config)(images, return_tensors="np")["pixel_values"]


def _ours(config, sources):
    return Preprocessor.from_config(config)([load_image(source) for source in sources])


def _assert_bit_identical(ours, reference):
    assert ours.dtype == np.float32 and reference.dtype == np.float32
    assert ours.shape == reference.shape
    assert np.array_equal(ours, reference), f"max abs diff {np.abs(ours - reference).max()}"


def _random_rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("height, width", [(1, 1), (17, 900), (480, 640), (768, 768), (1000, 1500)])
def test_rgb_matches_reference(height, width):
    image = Image.fromarray(_random_rgb(height, width))
    _assert_bit_identical(_ours(FLORENCE2_CONFIG, [image]), _reference(FLORENCE2_CONFIG, [image]))


def test_array_input_matches_reference():
    array = _random_rgb(333, 517, seed=1)
    _assert_bit_identical(_ours(FLORENCE2_CONFIG, [array]), _reference(FLORENCE2_CONFIG, [array]))


def test_mixed_batch_matches_reference():
    images = [Image.fromarray(_random_rgb(h, w, seed=h)) for h, w in [(40, 60), (768, 768), (901, 333)]]
    _assert_bit_identical(_ours(FLORENCE2_CONFIG, images), _reference(FLORENCE2_CONFIG, images))


def _with_mode(mode, seed=2):
    rgb = Image.fromarray(_random_rgb(123, 77, seed))
    if mode in ("RGBA", "LA", "PA"):
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(_random_rgb(123, 77, seed + 1)[:, :, 0]))
        return rgba.convert(mode)
    if mode == "I;16":
        return Image.fromarray((_random_rgb(123, 77, seed)[:, :, 0].astype(np.uint16) * 257))
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "PA", "CMYK", "I;16", "I", "F", "1", "YCbCr"])
def test_other_modes_match_converting_reference(mode):
    image = _with_mode(mode)
    assert image.mode == mode
    expected = _reference(CONVERTING_CONFIG, [image])
    _assert_bit_identical(_ours(CONVERTING_CONFIG, [image]), expected)
    # null converts every non-RGB mode exactly as true does (transformers raises instead).
    _assert_bit_identical(_ours(FLORENCE2_CONFIG, [image]), expected)


def test_palette_with_transparency_matches_reference():
    image = Image.fromarray(_random_rgb(50, 40, seed=3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 5
    _assert_bit_identical(_ours(CONVERTING_CONFIG, [image]), _reference(CONVERTING_CONFIG, [image]))


def test_rgb_with_transparency_key_follows_the_flag():
    # An RGB PNG with a tRNS colour: true composites it onto white, null leaves RGB untouched.
    image = Image.fromarray(_random_rgb(30, 20, seed=4))
    image.info["transparency"] = tuple(int(v) for v in np.asarray(image)[0, 0])
    for config in (FLORENCE2_CONFIG, CONVERTING_CONFIG):
        _assert_bit_identical(_ours(config, [image]), _reference(config, [image]))
    assert not np.array_equal(_ours(FLORENCE2_CONFIG, [image]), _ours(CONVERTING_CONFIG, [image]))


def test_rgba_array_matches_reference_numpy_compositing():
    # transformers composites an RGBA array in float64 with np.round; load_image leaves the alpha to
    # PIL's alpha_composite. Both agree on every (value, alpha) pair, so the pixels agree too.
    value, alpha = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    array = np.stack([value, 255 - value, value, alpha], axis=-1).astype(np.uint8)
    _assert_bit_identical(_ours(CONVERTING_CONFIG, [array]), _reference(CONVERTING_CONFIG, [array]))


def test_reference_still_rejects_non_rgb_with_null_convert():
    # Canary for the quirk our null handling works around; if it fails, revisit the module doc.
    with pytest.raises(ValueError, match="mean must have 4 elements"):
        _reference(FLORENCE2_CONFIG, [_with_mode("RGBA")])


def test_grayscale_arrays_are_gray_rgb():
    gray = _random_rgb(20, 30)[:, :, 0]
    as_rgb = np.repeat(gray[:, :, None], 3, axis=-1)
    expected = _reference(FLORENCE2_CONFIG, [as_rgb])
    _assert_bit_identical(_ours(FLORENCE2_CONFIG, [gray]), expected)
    _assert_bit_identical(_ours(FLORENCE2_CONFIG, [gray[:, :, None]]), expected)


@pytest.mark.parametrize(
    "override",
    [
        {"do_normalize": False},
        {"do_rescale": False},
        {"resample": 2, "size": {"height": 384, "width": 512}},
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 0.5},
        {"do_center_crop": True},  # crop_size equals size: the identity
        {"do_resize": None, "resample": None, "size": None},  # null flags are false, as in transformers
    ],
)
def test_other_settings_match_reference(override):
    config = {**FLORENCE2_CONFIG, **override}
    image = Image.fromarray(_random_rgb(100, 200, seed=5))
    _assert_bit_identical(_ours(config, [image]), _reference(config, [image]))


def test_config_round_trip_and_defaults():
    preprocessor = Preprocessor.from_config(FLORENCE2_CONFIG)
    assert preprocessor == Preprocessor()
    assert Preprocessor.from_config(preprocessor.to_config()) == preprocessor
    assert Preprocessor.from_config({**FLORENCE2_CONFIG, "do_convert_rgb": True}).do_convert_rgb is True
    absent = {k: v for k, v in FLORENCE2_CONFIG.items() if k != "do_convert_rgb"}
    assert Preprocessor.from_config(absent).do_convert_rgb is True  # CLIPImageProcessor's default


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"size": {"shortest_edge": 768}}, "expected preprocessor size {'height': H, 'width': W}"),
        ({"resample": 9}, "expected resample in"),
        ({"image_mean": [0.5, 0.5]}, "expected image_mean to be 3 finite numbers"),
        ({"image_std": [0.0, 1.0, 1.0]}, "expected a non-zero image_std"),
        ({"rescale_factor": None}, "expected a value for rescale_factor since do_rescale is true"),
        ({"resample": None}, "expected a value for resample since do_resize is true"),
        ({"do_center_crop": True, "crop_size": {"height": 700, "width": 700}}, "expected do_center_crop false"),
        ({"do_pad": True}, "expected do_pad false"),
        ({"do_resize": "yes"}, "expected do_resize to be true or false"),
    ],
)
def test_bad_configs_raise_artifact_error(override, message):
    with pytest.raises(ArtifactError) as info:
        Preprocessor.from_config({**FLORENCE2_CONFIG, **override})
    assert message in str(info.value)


def test_missing_config_keys_raise():
    with pytest.raises(ArtifactError, match=r"missing \['image_mean'\]"):
        Preprocessor.from_config({k: v for k, v in FLORENCE2_CONFIG.items() if k != "image_mean"})


def test_preprocessor_input_errors():
    preprocessor = Preprocessor()
    with pytest.raises(ImageError, match="non-empty list of PIL images; got list"):
        preprocessor([])
    with pytest.raises(ImageError, match="expected PIL images .* got ndarray with shape \\(2, 2, 3\\) at index 1"):
        preprocessor([Image.new("RGB", (2, 2)), np.zeros((2, 2, 3), np.uint8)])
    strict = Preprocessor(do_convert_rgb=False)
    with pytest.raises(ImageError, match="expected an RGB image since do_convert_rgb is false; got mode L"):
        strict([Image.new("L", (2, 2))])
    unresized = Preprocessor(do_resize=False)
    assert unresized([Image.new("RGB", (5, 3))]).shape == (1, 3, 3, 5)
    with pytest.raises(ImageError, match="expected images of one size"):
        unresized([Image.new("RGB", (5, 3)), Image.new("RGB", (3, 5))])


# ---- runtime.images ----------------------------------------------------------------------------


def _encoded(fmt, **options):
    buffer = io.BytesIO()
    Image.fromarray(_random_rgb(64, 80, seed=6)).save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("suffix, fmt", [(".png", "PNG"), (".JPG", "JPEG"), (".webp", "WEBP"), (".gif", "GIF")])
def test_load_image_from_path(tmp_path, suffix, fmt):
    path = tmp_path / f"image{suffix}"
    path.write_bytes(_encoded(fmt))
    for source in (path, str(path)):
        image = load_image(source)
        assert image.size == (80, 64)
        assert np.asarray(image).size  # pixels stay readable after the file is closed


def test_load_image_passes_pil_and_arrays():
    image = Image.new("RGBA", (3, 2))
    assert load_image(image) is image
    assert load_image(np.zeros((2, 3, 4), np.uint8)).mode == "RGBA"
    assert load_image(np.zeros((2, 3), np.uint8)).mode == "L"
    assert load_image(np.zeros((2, 3, 3), np.uint8)[:, ::-1]).size == (3, 2)  # non-contiguous view


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_raise(tmp_path, fmt):
    data = _encoded(fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cannot decode image .*truncated"):
        load_image(path)
    # A lazily opened PIL image is decoded by load_image too.
    with pytest.raises(ImageError, match="cannot decode image RGB 80x64 PIL image"):
        load_image(Image.open(io.BytesIO(data[: len(data) // 2])))


def test_jpeg_missing_only_its_last_bytes_raises(tmp_path):
    data = _encoded("JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:-2])  # the end-of-image marker is gone
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.png", "does not exist"),
        (lambda d: d, "is a directory"),
        (lambda d: _write(d / "empty.png", b""), "is empty (0 bytes)"),
        (lambda d: _write(d / "notes.png", b"hello, not an image"), "is not an image PIL can read"),
    ],
)
def test_bad_paths_raise_image_error(tmp_path, make, message):
    with pytest.raises(ImageError) as info:
        load_image(make(tmp_path))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, Florence2Error)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), "expected an HxWx3 uint8 array; got dtype float32 with shape (4, 4, 3)"),
        (np.zeros((4, 4, 2), np.uint8), "expected an HxWx3 uint8 array (or HxW, HxWx4); got shape (4, 4, 2)"),
        (np.zeros((3, 4, 4, 3), np.uint8), "got shape (3, 4, 4, 3)"),
        (np.zeros((0, 4, 3), np.uint8), "got shape (0, 4, 3)"),
    ],
)
def test_bad_arrays_raise_image_error(array, message):
    with pytest.raises(ImageError) as info:
        load_image(array)
    assert message in str(info.value)


def test_bad_source_type():
    with pytest.raises(ImageError, match="expected an image path, PIL image or HxWx3 uint8 array; got bytes"):
        load_image(b"\x89PNG")


def test_is_image_file():
    assert all(is_image_file(f"a/b{s}") for s in [".jpg", ".JPEG", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"])
    assert not any(is_image_file(name) for name in ["a.txt", "a", "png", "a.png.json"])
