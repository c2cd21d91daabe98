"""DaViT's widest activations computed in bands, so the vision tower's peak memory is bounded.

At base size the first stage holds 192 x 192 tokens. One window attention's scores are then 85 MB
and one MLP's hidden layer 75 MB per image, in fp32. Each op writes a new tensor beside its input,
so the tower's peak was ~420 MB above its weights (int8, measured with onnxruntime's arena).

The work can be split along the image without changing a value:
- window attention, in bands of whole window rows: a window never spans two bands;
- the MLP, in runs of tokens: it maps each token on its own.

A band's intermediates are freed before the next band starts. `BAND_BYTES` bounds the largest
intermediate of one band, per image. Images small enough for one band (the test checkpoints, and
the later stages at base size) get the plain computation.

Measured at base size (int8 ONNX, one 768 px image, peak RSS): the vision tower alone 680 -> 651 MB,
a whole caption 868 -> 820 MB. Less than the bands' own sizes suggest: what remains of the peak is
elsewhere, e.g. the channel attentions' qkv over all of a stage's tokens (57 MB in the first stage,
and a permuted copy), which attends across tokens and cannot be split along them.

The modules keep the original's weights and attribute names (`qkv`, `proj`, `fc1`, `fc2`), so
quantization policies still select nodes by transformers' module names. Banded, each weight is
transposed once and multiplied band by band: calling the `nn.Linear` per band would export one
folded copy of the weight per band (measured: the int8 tower 112 -> 258 MB).
"""

from __future__ import annotations

import torch
from torch import nn

# Largest intermediate of one band, per image. 16 MB splits base size's first stage into 6 window
# bands and 5 MLP runs, the second into 3 of each, and leaves the third stage whole.
BAND_BYTES = 16 * 2**20
_FLOAT = 4  # bytes: bands are sized for fp32 activations, the widest any target computes in


def _runs(total: int, per_item: int, budget: int) -> list[tuple[int, int]]:
    """[start, stop) ranges covering `total` items, each holding at most `budget` bytes (one item at least)."""
    step = max(1, budget // max(per_item, 1))
    return [(start, min(start + step, total)) for start in range(0, total, step)]


class BandedWindowAttention(nn.Module):
    """Same weights and result as a `Florence2VisionWindowAttention`, computed in bands of window rows."""

    def __init__(self, original: nn.Module, band_bytes: int = BAND_BYTES):
        super().__init__()
        self.qkv, self.proj = original.qkv, original.proj
        self.window_size, self.num_heads, self.scale = original.window_size, original.num_heads, original.scale
        self.band_bytes = band_bytes

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Height, width and channels are static (images are resized to a fixed size); the batch axis
        # stays symbolic in graphs exported with a dynamic batch: -1 wherever it appears.
        height, width, channels = (int(d) for d in hidden_states.shape[1:])
        ws, heads = self.window_size, self.num_heads
        pad_bottom, pad_right = (ws - height % ws) % ws, (ws - width % ws) % ws
        if pad_bottom or pad_right:
            hidden_states = nn.functional.pad(hidden_states, (0, 0, 0, pad_right, 0, pad_bottom))
        rows, cols = (height + pad_bottom) // ws, (width + pad_right) // ws
        tokens = ws * ws
        row_bytes = cols * max(heads * tokens * tokens, tokens * 3 * channels) * _FLOAT  # scores or qkv
        runs = _runs(rows, row_bytes, self.band_bytes)
        if len(runs) == 1:
            merged = self._attend(hidden_states, rows, cols, self.qkv, self.proj)
        else:  # [B, rows*ws, cols*ws, C], band by band, every band multiplying the same weights
            qkv, proj = _shared(self.qkv), _shared(self.proj)
            merged = torch.cat([self._attend(hidden_states[:, start * ws:stop * ws], stop - start, cols, qkv, proj)
                                for start, stop in runs], dim=1)
        if pad_bottom or pad_right:
            merged = merged[:, :height, :width, :]
        return merged.reshape(-1, height * width, channels)

    def _attend(self, band: torch.Tensor, rows: int, cols: int, qkv_proj, out_proj) -> torch.Tensor:
        """Window attention over `rows` x `cols` whole windows: [B, rows*ws, cols*ws, C] in and out."""
        ws, heads, channels = self.window_size, self.num_heads, int(band.shape[-1])
        windows = band.reshape(-1, rows, ws, cols, ws, channels).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(-1, ws * ws, channels)
        qkv = qkv_proj(windows).reshape(-1, ws * ws, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        weights = torch.softmax(torch.matmul(query, key.transpose(2, 3)) * self.scale, dim=-1)
        out = torch.matmul(weights, value).transpose(1, 2).reshape(-1, ws * ws, channels)
        out = out_proj(out).reshape(-1, rows, cols, ws, ws, channels).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(-1, rows * ws, cols * ws, channels)


class BandedMLP(nn.Module):
    """Same weights and result as a `Florence2VisionMLP`, computed in runs of tokens."""

    def __init__(self, original: nn.Module, band_bytes: int = BAND_BYTES):
        super().__init__()
        self.fc1, self.fc2, self.activation_fn = original.fc1, original.fc2, original.activation_fn
        self.band_bytes = band_bytes

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        runs = _runs(int(hidden_states.shape[1]), self.fc1.out_features * _FLOAT, self.band_bytes)
        if len(runs) == 1:
            return self.fc2(self.activation_fn(self.fc1(hidden_states)))
        fc1, fc2 = _shared(self.fc1), _shared(self.fc2)
        return torch.cat([fc2(self.activation_fn(fc1(hidden_states[:, start:stop]))) for start, stop in runs], dim=1)


def _shared(linear: nn.Linear):
    """`linear` as a function whose weight is transposed once, for every band that calls it."""
    weight = linear.weight.t()
    bias = linear.bias
    return (lambda x: torch.matmul(x, weight) + bias) if bias is not None else (lambda x: torch.matmul(x, weight))
