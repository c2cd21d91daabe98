"""Shared fixtures: a tiny random Florence-2 checkpoint (transformers-native layout, tokenizer trained
at test time) and its fp32 ONNX artifact, built once per test session."""

from __future__ import annotations

import pytest
from PIL import Image


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
    from export.embedded import sample_image

    return sample_image(seed, size)


@pytest.fixture(scope="session")
def images():
    return [make_image(0, (640, 480)), make_image(1, (300, 500)), make_image(2, (768, 768))]
