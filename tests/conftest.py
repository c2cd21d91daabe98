"""Shared fixtures: a tiny random Florence-2 checkpoint (transformers-native layout, tokenizer trained
at test time) and its fp32 ONNX artifact, built once per test session."""

from __future__ import annotations

import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from export.embedded import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny", preset="random-tiny", seed=0)


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
    from runtime.probes import sample_image

    return sample_image(seed, size)


@pytest.fixture(scope="session")
def images():
    return [make_image(0, (640, 480)), make_image(1, (300, 500)), make_image(2, (768, 768))]


# Checkpoints whose shapes differ from the public ones, so nothing passes only for 768 px: image size,
# window size, widths, layer counts and padded embedding rows vary. Built once per session.
VARIANTS = {
    # 128 px, window 4; 1664 embedding rows for a 1602-token tokenizer (padding, as real checkpoints have).
    "px128": dict(image_size=128, vision={"window_size": 4}, text={"vocab_size": 1664}),
    # 384 px, window 12, narrower and deeper: d 48, 2 heads of 24, 3 decoder layers.
    "px384": dict(image_size=384, vision=dict(embed_dim=[8, 16, 24, 32], num_heads=[1, 2, 3, 4],
                                              num_groups=[1, 2, 3, 4], projection_dim=48, window_size=12),
                  text=dict(d_model=48, encoder_attention_heads=2, decoder_attention_heads=2, decoder_layers=3,
                            encoder_ffn_dim=96, decoder_ffn_dim=96)),
}


@pytest.fixture(scope="session")
def variant_checkpoint(tmp_path_factory):
    """name -> checkpoint folder of VARIANTS[name], built on first use."""
    from export.embedded import build_checkpoint

    built = {}

    def get(name: str):
        if name not in built:
            built[name] = build_checkpoint(tmp_path_factory.mktemp("variants") / name, preset="random-tiny", seed=3,
                                           **VARIANTS[name])
        return built[name]

    return get


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """(checkpoint, target, **run_export options) -> artifact folder, exported once per session."""
    import json
    from pathlib import Path

    from export.pipeline import run_export

    built = {}

    def get(checkpoint, target: str, **options):
        key = (str(checkpoint), target, json.dumps(options, sort_keys=True, default=str))
        if key not in built:
            output = tmp_path_factory.mktemp("exported") / f"{Path(checkpoint).name}-{target}"
            run_export(str(checkpoint), target, output, **options)
            built[key] = output
        return built[key]

    return get
