"""The decoder graph as a `runtime.search.StepModel`: one call per generated token.

Holds the self-attention cache between calls (the graph returns present K/V, we feed them back as
past) and the cross-attention K/V computed once by the encoder graph. Cross K/V stay at batch size
B for every beam count: the decoder graph maps each beam row to its batch item itself.
"""

from __future__ import annotations

import numpy as np


class DecoderStep:
    def __init__(self, session, cross: dict[str, np.ndarray], encoder_mask: np.ndarray, layers: int,
                 heads: int, head_dim: int):
        self._session = session
        self._static = {"encoder_attention_mask": encoder_mask, **cross}
        self._past_names = [f"past.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
        self._present_names = [name.replace("past.", "present.", 1) for name in self._past_names]
        self._outputs = ["logits", *self._present_names]
        self._heads, self._head_dim = heads, head_dim
        self._past: list[np.ndarray] | None = None

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        if self._past is None:  # first step: an empty cache with one row per beam
            empty = np.zeros((input_ids.shape[0], self._heads, 0, self._head_dim), dtype=np.float32)
            self._past = [empty] * len(self._past_names)
        feeds = {"input_ids": input_ids, **self._static, **dict(zip(self._past_names, self._past))}
        out = self._session.run(feeds, self._outputs)
        self._past = [out[name] for name in self._present_names]
        return out["logits"][:, -1, :]

    def reorder(self, beam_idx: np.ndarray) -> None:
        # Only the self-attention cache follows the beams; cross K/V are per batch item.
        self._past = [np.take(past, beam_idx, axis=0) for past in self._past]
