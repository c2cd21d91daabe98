"""The decoder step over a static-shape artifact (manifest "static", `python -m export --static`).

The static decoder takes `beams` rows and reads self-attention K/V from fixed buffers of
`max_decode` slots at a `position`, returning only the new K/V row (export/static_graphs.py).
`StaticDecoderStep` owns the buffers [beams, H, max_decode, hd] per layer, writes each step's row
into slot `position` in place, and reorders the filled slots for beam search. Greedy search (or
fewer beams) uses the first rows; the rows past them run on token 0 and are never read.
"""

from __future__ import annotations

import numpy as np

from .contract import ENCODER_ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION, Contract, LimitError
from .graph import Graph


class StaticDecoderStep:
    def __init__(self, graph: Graph, contract: Contract, cross: dict[str, np.ndarray], encoder_mask: np.ndarray):
        self._graph = graph
        dims, layout = contract.dims, contract.static
        self._rows_out = dict(zip(contract.present_names, contract.past_names))
        self._outputs = [LOGITS, *self._rows_out]
        # Allocated once per generation and only written in place, so one feeds dict serves every
        # step; the backend reads them where they are (no per-step copy).
        shape = (layout.beams, dims.decoder_heads, layout.max_decode, dims.head_dim)
        self._buffers = {name: np.zeros(shape, dtype=np.float32) for name in contract.past_names}
        self._ids = np.zeros((layout.beams, 1), dtype=np.int64)
        self._position = np.zeros(1, dtype=np.int64)
        self._feeds = {INPUT_IDS: self._ids, POSITION: self._position, ENCODER_ATTENTION_MASK: encoder_mask,
                       **cross, **self._buffers}
        self._max_decode = layout.max_decode
        self.position = 0  # slots filled = tokens consumed so far

    def feeds(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The decoder's inputs for the next step (the fidelity report runs them through two artifacts)."""
        if self.position >= self._max_decode:  # Contract.check_request refuses first; this guards other callers
            raise LimitError(f"the static decoder's KV buffers hold {self._max_decode} tokens; "
                             f"step {self.position + 1} does not fit")
        self._ids[:input_ids.shape[0]] = input_ids
        self._position[0] = self.position
        return self._feeds

    def __call__(self, input_ids: np.ndarray) -> np.ndarray:
        out = self._graph.run(self.feeds(input_ids), self._outputs, finite=(LOGITS,))
        for present, past in self._rows_out.items():
            self._buffers[past][:, :, self.position] = out[present][:, :, 0]
        self.position += 1
        return out[LOGITS][:input_ids.shape[0], -1, :]

    def reorder(self, beam_idx: np.ndarray) -> None:
        used, filled = len(beam_idx), self.position
        if np.array_equal(beam_idx, np.arange(used)):  # every beam kept its own row
            return
        for buffer in self._buffers.values():
            buffer[:used, :, :filled] = buffer[beam_idx, :, :filled]  # the right side is a copy first
