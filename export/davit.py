"""DaViT modules rewritten for export: same weights, same result, cheaper graphs.

transformers' `Florence2VisionChannelAttention` permutes qkv to [3, B, groups, C/groups, tokens]
so that attention runs across channels. That permute moves the innermost axis, and ONNX Runtime
runs it as an element-wise Transpose of the whole activation: measured on the base-shape int8
vision tower (768x768, 2 CPU cores) the Transposes took 290 of 1050 ms, the channel attentions'
the largest (35 ms each in stage 0); with this module, 113 ms, and the tower 976 -> 822 ms.
`ChannelAttention` keeps q, k, v token-major, [B, groups, tokens, C/groups] (a permute that moves
whole rows), and puts the transposes on the matmul operands, where ONNX Runtime folds them into
the product (FusedMatMul transA/transB; OpenVINO's int8 tower gained less, 1110 -> 1062 ms):

    weights = softmax(q^T k * tokens^-0.5)     [B, groups, d, d]   (stock: q k^T over [.., d, tokens])
    out^T   = v weights^T                      [B, groups, tokens, d]

`export_copy` gives every exporter a copy of the model with its modules swapped, parameters
shared (no weight is duplicated) and the original left as transformers built it: the parity gate
compares the exported graphs against that original.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """Same weights and result as a `Florence2VisionChannelAttention`. Its scale is a Python float
    (the token count is static: images are resized to a fixed size), which CoreML also needs: the
    stock module's `num_tokens ** -0.5` on a traced shape is an int cast its converter cannot take."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.qkv, self.proj, self.groups = original.qkv, original.proj, original.groups

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        tokens, channels = int(hidden_states.shape[1]), int(hidden_states.shape[2])
        # -1: the batch axis stays symbolic in graphs exported with a dynamic batch.
        qkv = self.qkv(hidden_states).reshape(-1, tokens, 3, self.groups, channels // self.groups)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # [3, B, groups, tokens, d]: the innermost axis stays put
        query, key, value = qkv[0], qkv[1], qkv[2]
        weights = torch.softmax(torch.matmul(query.transpose(2, 3), key) * float(tokens) ** -0.5, dim=-1)
        out = torch.matmul(value, weights.transpose(2, 3))  # [B, groups, tokens, d]
        return self.proj(out.transpose(1, 2).reshape(-1, tokens, channels))


def export_copy(module: nn.Module, rewrites: dict[type, type]) -> nn.Module:
    """A copy of `module` whose submodules of a type in `rewrites` are replaced by
    `rewrites[type](original)`. Parameters and buffers are shared with `module`, which is untouched."""
    shared = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    copied = copy.deepcopy(module, shared)
    for parent in list(copied.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in rewrites:
                setattr(parent, name, rewrites[type(child)](child))
    return copied


def fast_vision_rewrites() -> dict[type, type]:
    """The rewrites every target's vision graph gets (CoreML's window attention: export/rank5.py)."""
    from transformers.models.florence2.modeling_florence2 import (Florence2VisionChannelAttention, Florence2VisionMLP,
                                                                 Florence2VisionWindowAttention)

    from .vision_bands import BandedMLP, BandedWindowAttention

    return {Florence2VisionChannelAttention: ChannelAttention, Florence2VisionWindowAttention: BandedWindowAttention,
            Florence2VisionMLP: BandedMLP}
