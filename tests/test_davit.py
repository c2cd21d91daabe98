"""The export-friendly DaViT modules equal transformers' and share its weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.davit import ChannelAttention, export_copy, fast_vision_rewrites
from export.graphs import VisionEncoder


def _channel_attentions(model):
    from transformers.models.florence2.modeling_florence2 import Florence2VisionChannelAttention

    return [m for m in model.modules() if isinstance(m, Florence2VisionChannelAttention)]


@pytest.mark.parametrize("tokens", [37, 144])
def test_channel_attention_equals_transformers(hf_model, tokens):
    originals = _channel_attentions(hf_model)
    assert originals
    for original in originals:
        x = torch.randn(2, tokens, original.dim, generator=torch.Generator().manual_seed(tokens))
        with torch.no_grad():
            np.testing.assert_allclose(ChannelAttention(original)(x).numpy(), original(x).numpy(), atol=1e-5, rtol=0)


def test_export_copy_shares_weights_and_leaves_the_original(hf_model):
    copied = export_copy(hf_model.model, fast_vision_rewrites())
    assert not _channel_attentions(copied) and _channel_attentions(hf_model)
    assert sum(isinstance(m, ChannelAttention) for m in copied.modules()) == len(_channel_attentions(hf_model))
    original = dict(hf_model.model.named_parameters())
    for name, param in copied.named_parameters():  # same names (quantization selects by them), same storage
        assert param is original[name]


def test_vision_encoder_graph_module_equals_transformers(hf_model):
    pixels = torch.randn(2, 3, 768, 768, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = hf_model.model.get_image_features(pixels).pooler_output
        got = VisionEncoder(hf_model)(pixels)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4, rtol=0)
