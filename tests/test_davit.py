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


def _modules(model, kind: str):
    from transformers.models.florence2 import modeling_florence2

    return [m for m in model.modules() if isinstance(m, getattr(modeling_florence2, kind))]


# (height, width): a multiple of the window, and sizes that need padding on one or both sides.
@pytest.mark.parametrize("height,width", [(24, 24), (25, 31), (13, 26)])
@pytest.mark.parametrize("band_bytes", [1, 40_000])
def test_banded_window_attention_equals_transformers(hf_model, height, width, band_bytes):
    from export.vision_bands import BandedWindowAttention

    for original in _modules(hf_model, "Florence2VisionWindowAttention"):
        x = torch.randn(2, height, width, original.dim, generator=torch.Generator().manual_seed(height * width))
        banded = BandedWindowAttention(original, band_bytes=band_bytes)
        with torch.no_grad():
            np.testing.assert_allclose(banded(x).numpy(), original(x).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("band_bytes", [1, 3000, 10**9])
def test_banded_mlp_equals_transformers(hf_model, band_bytes):
    from export.vision_bands import BandedMLP

    for original in _modules(hf_model, "Florence2VisionMLP"):
        x = torch.randn(2, 101, original.fc1.in_features, generator=torch.Generator().manual_seed(band_bytes % 97))
        with torch.no_grad():
            np.testing.assert_allclose(BandedMLP(original, band_bytes=band_bytes)(x).numpy(), original(x).numpy(),
                                       atol=1e-5, rtol=0)


def test_bands_cover_every_row_once():
    from export.vision_bands import _runs

    for total, per_item, budget in [(16, 5, 16), (16, 5, 1), (7, 10, 1000), (9216, 4096, 2**24)]:
        runs = _runs(total, per_item, budget)
        assert [i for start, stop in runs for i in range(start, stop)] == list(range(total))
        assert all((stop - start) * per_item <= budget or stop - start == 1 for start, stop in runs)
    assert len(_runs(16, 5, 15)) == 6  # 3 rows of 5 bytes per band: 3+3+3+3+3+1


def test_export_copy_bands_every_window_attention_and_mlp(hf_model):
    from export.vision_bands import BandedMLP, BandedWindowAttention

    copied = export_copy(hf_model.model, fast_vision_rewrites())
    for kind, banded in (("Florence2VisionWindowAttention", BandedWindowAttention), ("Florence2VisionMLP", BandedMLP)):
        assert not _modules(copied, kind)
        assert sum(isinstance(m, banded) for m in copied.modules()) == len(_modules(hf_model, kind)) > 0
