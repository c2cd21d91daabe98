"""DaViT's window attention, rewritten so no tensor exceeds rank 5 (CoreML's limit).

transformers' `Florence2VisionWindowAttention` partitions [B, H, W, C] into windows through a rank-6
view [B, H/ws, ws, W/ws, ws, C]. Folding the batch into the window-row axis gives the same memory
order with one axis less: [B*H/ws, ws, W/ws, ws, C] (H is a multiple of ws after padding, so rows of
consecutive images never mix). The window merge is the same trick backwards. Shapes are taken as
Python ints: CoreML graphs are static, and an int cast of a traced tensor is what stops the
converter on the stock module. Channel attention gets `export.davit.ChannelAttention`, as on every target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .davit import export_copy, fast_vision_rewrites


class Rank5WindowAttention(nn.Module):
    """Same weights and result as a `Florence2VisionWindowAttention`; every tensor rank <= 5."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.qkv, self.proj = original.qkv, original.proj
        self.window_size, self.num_heads, self.scale = original.window_size, original.num_heads, original.scale

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = (int(d) for d in hidden_states.shape)
        ws, heads = self.window_size, self.num_heads
        pad_bottom, pad_right = (ws - height % ws) % ws, (ws - width % ws) % ws
        if pad_bottom or pad_right:
            hidden_states = F.pad(hidden_states, (0, 0, 0, pad_right, 0, pad_bottom))
        rows, cols = (height + pad_bottom) // ws, (width + pad_right) // ws
        windows = hidden_states.reshape(batch * rows, ws, cols, ws, channels).permute(0, 2, 1, 3, 4)
        windows = windows.reshape(batch * rows * cols, ws * ws, channels)
        count, tokens = windows.shape[0], ws * ws
        qkv = self.qkv(windows).reshape(count, tokens, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        weights = torch.softmax(torch.matmul(query, key.transpose(2, 3)) * self.scale, dim=-1)
        out = torch.matmul(weights, value).transpose(1, 2).reshape(count, tokens, channels)
        out = self.proj(out)
        out = out.reshape(batch * rows, cols, ws, ws, channels).permute(0, 2, 1, 3, 4)
        out = out.reshape(batch, rows * ws, cols * ws, channels)[:, :height, :width, :]
        return out.reshape(batch, height * width, channels)


def rank5_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` (the model or its vision tower) with window and channel attentions
    rewritten, parameters shared; the original is untouched."""
    from transformers.models.florence2.modeling_florence2 import Florence2VisionWindowAttention

    return export_copy(module, {**fast_vision_rewrites(), Florence2VisionWindowAttention: Rank5WindowAttention})
