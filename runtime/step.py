"""The decoder graph as a `runtime.search.StepModel`: one call per generated token.

`DecoderStep` (dynamic artifacts) holds the self-attention cache between calls (the graph returns
present K/V, they are fed back as past). Cross-attention K/V come once from the encoder graph and
stay at batch size B for every beam count: the decoder graph maps each beam row to its batch item.
`runtime/static_step.py` is the same protocol over a static artifact's fixed buffers.
"""

from __future__ import annotations

import numpy as np

from .contract import ENCODER_ATTENTION_MASK, INPUT_IDS, LOGITS, Contract
from .graph import Graph


class DecoderStep:
    def __init__(self, graph: Graph, contract: Contract, cross: dict[str, np.ndarray], encoder_mask: np.ndarray):
        self._graph = graph
        dims = contract.dims
        # One feeds dict for every step: the fixed entries stay, input ids and past K/V are replaced.
        self._feeds = {ENCODER_ATTENTION_MASK: encoder_mask, **cross}
        self._past_names, self._present_names = contract.past_names, contract.present_names
        self._outputs = [LOGITS, *self._present_names]
        self._heads, self._head_dim = dims.decoder_heads, dims.head_dim
        self._past: list[np.ndarray] | None = None
        # reorder() writes into these flat buffers (grown by doubling) instead of fresh arrays per step.
        self._spare: list[np.ndarray] = []
        self._past_is_spare = False

    def feeds(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The decoder's inputs for the next step (the fidelity report runs them through two artifacts)."""
        if self._past is None:  # first step: an empty cache with one row per beam
            empty = np.zeros((input_ids.shape[0], self._heads, 0, self._head_dim), dtype=np.float32)
            self._past = [empty] * len(self._past_names)
        feeds = self._feeds
        feeds[INPUT_IDS] = input_ids
        feeds.update(zip(self._past_names, self._past))
        return feeds

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        out = self._graph.run(self.feeds(input_ids), self._outputs, finite=(LOGITS,))
        self._past = [out[name] for name in self._present_names]
        self._past_is_spare = False
        return out[LOGITS][:, -1, :]

    def reorder(self, beam_idx: np.ndarray) -> None:
        # Only the self-attention cache follows the beams; cross K/V are per batch item.
        if np.array_equal(beam_idx, np.arange(len(beam_idx))):  # every beam kept its own row
            return
        if self._past_is_spare:  # two reorders without a step between: the source is the spare itself
            self._past = [np.take(past, beam_idx, axis=0) for past in self._past]
            self._past_is_spare = False
            return
        # What the spare buffers held (the previous past) was consumed by the step that just ran.
        self._past = [np.take(past, beam_idx, axis=0, out=self._spare_like(i, past), mode="clip")
                      for i, past in enumerate(self._past)]
        self._past_is_spare = True

    def _spare_like(self, index: int, like: np.ndarray) -> np.ndarray:
        """A C-contiguous array shaped like `like`, on spare buffer `index`."""
        if index == len(self._spare):
            self._spare.append(np.empty(0, dtype=like.dtype))
        if self._spare[index].size < like.size or self._spare[index].dtype != like.dtype:
            self._spare[index] = np.empty(max(like.size, 2 * self._spare[index].size), dtype=like.dtype)
        return self._spare[index][:like.size].reshape(like.shape)
