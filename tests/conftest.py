"""Shared fixtures: a tiny random Florence-2 checkpoint (transformers-native layout, tokenizer trained
at test time) and its fp32 ONNX artifact, built once per test session."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from export.embedded import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def onnx_artifact(tiny_checkpoint, tmp_path_factory):
    from export.pipeline import run_export

    output = tmp_path_factory.mktemp("artifacts") / "tiny-onnx"
    run_export(str(tiny_checkpoint), "onnx", output)
    return output


@pytest.fixture(scope="session")
def hf_model(tiny_checkpoint):
    from transformers import Florence2ForConditionalGeneration

    return Florence2ForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()


@pytest.fixture(scope="session")
def hf_processor(tiny_checkpoint):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_checkpoint)


def make_image(seed: int, size: tuple[int, int]) -> Image.Image:
    """Noise plus a few shapes: different enough per seed to steer a random model differently."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x1, y1 = x0 + int(rng.integers(5, width // 2)), y0 + int(rng.integers(5, height // 2))
        draw.rectangle([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


@pytest.fixture(scope="session")
def images():
    return [make_image(0, (640, 480)), make_image(1, (300, 500)), make_image(2, (768, 768))]
