"""Each graph of a contract paired with what exports and checks it: its wrapper, its fp32 tolerance
and transformers' reference. The I/O names and shapes are the contract's (runtime/contract.py);
nothing here re-spells them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from runtime.contract import LOGITS, Contract, GraphIO

from .graphs import DecoderStep, EmbedTokens, Encoder, VisionEncoder
from .references import reference_outputs
from .static_graphs import StaticDecoderStep


@dataclass(frozen=True)
class GraphSpec:
    io: GraphIO
    wrapper: Callable  # model -> nn.Module
    tolerance: float  # fp32 max abs diff accepted by the parity gate, per output
    output_tolerances: dict[str, float] = field(default_factory=dict)  # per-output exceptions

    @property
    def name(self) -> str:
        return self.io.name

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        """Input name -> {axis: symbolic dim}, in the graph's input order (what exporters take)."""
        return {t.name: t.dynamic_axes for t in self.io.inputs}

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return {t.name: t.dynamic_axes for t in self.io.outputs}

    def tolerance_of(self, output: str) -> float:
        return self.output_tolerances.get(output, self.tolerance)

    def reference(self, model, feeds, contract: Contract):
        return reference_outputs(self.name, model, feeds, contract)


def graph_specs(contract: Contract) -> list[GraphSpec]:
    """The four graphs of `contract`: dynamic, or with a static layout its fixed-shape form."""
    io = contract.graphs
    decoder = StaticDecoderStep if contract.static else DecoderStep
    return [
        # The vision tower is ~20 stacked blocks over the full image: float error accumulates more.
        GraphSpec(io["vision_encoder"], VisionEncoder, tolerance=1e-4),
        GraphSpec(io["embed_tokens"], EmbedTokens, tolerance=1e-6),
        GraphSpec(io["encoder"], Encoder, tolerance=1e-4),
        # Logits are d-wide dot products with the tied embedding, magnitude 30-100 at base size: 1e-3
        # there is ~1e-5 relative, far inside any top-1 margin that matters.
        GraphSpec(io["decoder"], decoder, tolerance=1e-4, output_tolerances={LOGITS: 1e-3}),
    ]
