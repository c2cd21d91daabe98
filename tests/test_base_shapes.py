"""Florence-2-base shapes (random weights from the config): every graph within tolerance, and the
runtime token-identical to transformers end to end. Minutes, not seconds: marked slow."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from export.embedded import build_checkpoint
    from export.pipeline import run_export

    root = tmp_path_factory.mktemp("base")
    checkpoint = build_checkpoint(root / "checkpoint", preset="base")
    manifest = run_export(str(checkpoint), "onnx", root / "artifact")
    return checkpoint, root / "artifact", manifest


def test_base_graphs_pass_the_gate(base):
    _, artifact, manifest = base
    assert manifest.dims.d_model == 768 and manifest.dims.decoder_layers == 6
    assert manifest.dims.vocab_size == 51289 and manifest.dims.decoder_heads == 12
    for name, graph in manifest.graphs.items():
        assert graph.parity["passed"], (name, graph.parity)
        assert (artifact / graph.file).stat().st_size == graph.bytes
    # fp32 base: vision ~90M params, decoder holds the 51289x768 tied embedding.
    assert 300e6 < manifest.graphs["vision_encoder"].bytes < 420e6
    assert manifest.graphs["embed_tokens"].bytes > 51289 * 768 * 4


def test_base_runtime_matches_transformers(base, images):
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    from runtime import Florence2

    checkpoint, artifact, manifest = base
    hf_model = Florence2ForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    model = Florence2.load(artifact)
    # The embedding has rows past the tokenizer: the runtime never picks them, transformers is told so.
    padded = list(range(manifest.dims.tokenizer_size, manifest.dims.vocab_size))
    for task in ("<CAPTION>", "<OD>"):
        for beams in (1, 3):
            inputs = processor(text=task, images=images[0], return_tensors="pt")
            with torch.no_grad():
                want = hf_model.generate(**inputs, num_beams=beams, max_new_tokens=10, suppress_tokens=padded)[0].tolist()
            assert model.generate(images[0], task, num_beams=beams, max_new_tokens=10) == want
