"""One graph of a loaded artifact: its backend session behind the contract's I/O, checked at the boundary.

`Graph.run` is the only place the runtime calls a backend. It checks the feeds against the contract
(names, dtypes, every fixed axis and every named axis bound consistently: `Expected shape ... got ...
for input ...`), turns any backend failure into one `BackendError` line naming the graph, and checks
the outputs the caller names for NaN and infinity (cheap where it matters: logits per step, image
features once), so a broken quantized graph or NaN weights are named instead of crashing beam search.
"""

from __future__ import annotations

import numpy as np

from .contract import GraphIO
from .errors import BackendError


class Graph:
    def __init__(self, session, io: GraphIO):
        self.session, self.io, self.name = session, io, io.name
        self.device = session.device
        declared = list(getattr(session, "input_names", io.input_names))
        if sorted(declared) != sorted(io.input_names):
            raise BackendError(f"the {io.name} graph takes inputs {declared}; its manifest says {io.input_names}: "
                               "the graph file does not belong to this artifact")

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None,
            finite: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        self.check(feeds)
        try:
            result = self.session.run(feeds, outputs)
        except Exception as err:  # each backend raises its own types; the user gets one line naming the graph
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise BackendError(f"the {self.name} graph failed on {self.device}: {first}") from err
        for name in finite:
            if not np.isfinite(result[name]).all():
                raise BackendError(f"the {self.name} graph's {name} output is not finite (NaN or infinity): "
                                   "the artifact's weights or its precision pass are broken; export it again")
        return result

    def check(self, feeds: dict[str, np.ndarray]) -> None:
        """ValueError-free boundary check: BackendError with the expected and the actual."""
        bound: dict[str, int] = {}
        for tensor in self.io.inputs:
            value = feeds.get(tensor.name)
            if value is None:
                raise BackendError(f"{self.name}: missing input {tensor.name}")
            if value.dtype != tensor.dtype or value.ndim != len(tensor.shape):
                raise BackendError(f"{self.name}: expected {tensor.dtype} with shape {list(tensor.shape)}, got "
                                   f"{value.dtype} {list(value.shape)} for input {tensor.name}")
            for want, got in zip(tensor.shape, value.shape):
                if isinstance(want, str):
                    want = bound.setdefault(want, got)
                if want != got:
                    expected = [bound.get(s, s) if isinstance(s, str) else s for s in tensor.shape]
                    raise BackendError(f"{self.name}: expected shape {expected}, got {list(value.shape)} "
                                       f"for input {tensor.name}")
