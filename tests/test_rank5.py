"""The CoreML-safe DaViT rewrite equals transformers' modules, and really stays within rank 5."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.davit import ChannelAttention
from export.rank5 import Rank5WindowAttention, rank5_copy


def _window_attentions(model):
    from transformers.models.florence2.modeling_florence2 import Florence2VisionWindowAttention

    return [m for m in model.modules() if isinstance(m, Florence2VisionWindowAttention)]


@pytest.mark.parametrize("height,width", [(24, 24), (48, 36), (13, 30)])  # 13x30 needs padding
def test_window_attention_equals_transformers(hf_model, height, width):
    original = _window_attentions(hf_model)[0]
    rewritten = Rank5WindowAttention(original)
    x = torch.randn(2, height, width, original.dim, generator=torch.Generator().manual_seed(height))
    with torch.no_grad():
        np.testing.assert_allclose(rewritten(x).numpy(), original(x).numpy(), atol=1e-5, rtol=0)


def test_rewritten_vision_tower_equals_transformers(hf_model):
    rewritten = rank5_copy(hf_model.model).eval()
    assert not _window_attentions(rewritten) and _window_attentions(hf_model)  # all replaced, original intact
    assert any(isinstance(m, ChannelAttention) for m in rewritten.modules())
    pixels = torch.randn(2, 3, 768, 768, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf_model.model.get_image_features(pixels).pooler_output
        got = rewritten.get_image_features(pixels).pooler_output
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4, rtol=0)


def test_no_tensor_above_rank_5(hf_model):
    """Trace the rewritten tower and look at every intermediate shape."""
    from torch.fx.experimental.proxy_tensor import make_fx

    rewritten = rank5_copy(hf_model.model).eval()
    ranks = []
    graph = make_fx(lambda p: rewritten.get_image_features(p).pooler_output)(torch.randn(1, 3, 768, 768))
    for node in graph.graph.nodes:
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            ranks.append(value.dim())
    assert ranks and max(ranks) <= 5
    # and the stock module does go above (what the rewrite is for)
    stock = make_fx(lambda p: hf_model.model.get_image_features(p).pooler_output)(torch.randn(1, 3, 768, 768))
    assert max(n.meta["val"].dim() for n in stock.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)) == 6
