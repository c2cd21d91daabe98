"""The parity gate: every written graph, run by its backend, against transformers' own computation.

Inputs are generated (batch 2, two prompt lengths, a padded row, decoder steps with an empty and a
filled cache, greedy and 3 beams). The reference is transformers itself — `get_image_features`, the
BART encoder and decoder with their `EncoderDecoderCache` — not our wrappers, so a wrapper that
drifts from transformers fails here too. Every output outside tolerance is listed in one error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.contract import Contract
from runtime.probes import graph_cases

from .errors import ExportError, ParityError
from .specs import GraphSpec

# The fidelity floor of a reduced-precision graph: the least cosine similarity to transformers' fp32
# output that each output of each graph must keep on the gate's inputs (fp32 graphs are held to max
# abs diff instead). Set from measurement: the worst output of each graph with the ONNX policy of
# quantize/onnx.py (2026-11-23, onnxruntime 1.32), embedded:random-tiny / embedded:base (random weights):
#          vision_encoder     embed_tokens       encoder            decoder (logits)
#   fp16   1.00000/1.00000    1.00000/1.00000    1.00000/1.00000    1.00000/1.00000
#   int8   0.99996/0.99974    0.99998/0.99997    0.99994/0.99978    0.99936/0.99939
#   int4   0.99996/0.99974    0.99650/0.99654    0.99994/0.99978    0.96239/0.97915   (vision, encoder int8)
# Each floor leaves room below that for real checkpoints and for other targets' passes held to the
# same floors (OpenVINO's NNCF int4 also compresses the vision tower: int4 there measured 0.99084 at
# base), and sits far above what a broken pass gives (a zeroed word embedding: 0, see the tests).
# "*" covers graphs not named (another variant's graphs).
FIDELITY_FLOORS: dict[str, dict[str, float]] = {
    "fp16": {"*": 0.999},
    # Provisional (one measurement, tiny shapes): OpenVINO bf16 compute on this CPU's AMX-BF16 measured
    # vision 0.99998, embed_tokens 1.00000, encoder 0.99999, decoder logits 0.99976 (px128, 2026-12-02).
    # bf16 keeps 8 mantissa bits; deeper real stacks accumulate more: ~10x the measured 1 - cosine.
    "bf16": {"decoder": 0.995, "*": 0.998},
    "int8": {"vision_encoder": 0.995, "embed_tokens": 0.999, "encoder": 0.995, "decoder": 0.99, "*": 0.98},
    "int4": {"vision_encoder": 0.97, "embed_tokens": 0.99, "encoder": 0.97, "decoder": 0.90, "*": 0.90},
}


def fidelity_floor(precision: str, graph: str) -> float | None:
    """The floor for `graph` at `precision`; None for fp32 (held to max abs diff)."""
    floors = FIDELITY_FLOORS.get(precision)
    return floors.get(graph, floors.get("*")) if floors else None


@dataclass
class GraphParity:
    graph: str
    tolerance: float
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # worst over all cases, per output
    cases: int = 0
    output_tolerances: dict[str, float] = field(default_factory=dict)
    cosine: dict[str, float] = field(default_factory=dict)  # least over all cases, per output
    floor: float | None = None  # set for reduced precision: cosine decides, not max abs diff

    def tolerance_of(self, output: str) -> float:
        return self.output_tolerances.get(output, self.tolerance)

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values())

    @property
    def failures(self) -> list[str]:
        if self.floor is not None:
            return [f"{self.graph}.{name}: cosine {cos:.5f} < floor {self.floor:g}"
                    for name, cos in self.cosine.items() if not cos >= self.floor]
        return [f"{self.graph}.{name}: max abs diff {diff:.3g} > {self.tolerance_of(name):g}"
                for name, diff in self.max_abs_diff.items() if not diff <= self.tolerance_of(name)]

    def to_dict(self) -> dict:
        return {"tolerance": self.tolerance, "output_tolerances": self.output_tolerances,
                "max_abs_diff": self.worst, "per_output": self.max_abs_diff, "cases": self.cases,
                "min_cosine": min(self.cosine.values()) if self.cosine else None, "cosine": self.cosine,
                "fidelity_floor": self.floor, "passed": not self.failures}


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm else float(np.array_equal(a, b))


def check_graph(spec: GraphSpec, session, model, contract: Contract, precision: str = "fp32",
                seed: int = 0) -> GraphParity:
    """Run `session` and transformers on every generated case of the graph (runtime/probes.py); keep
    the worst diff (and the least cosine similarity) per output. fp32 is judged by max abs diff,
    other precisions by their floor."""
    result = GraphParity(spec.name, spec.tolerance, output_tolerances=dict(spec.output_tolerances),
                         floor=fidelity_floor(precision, spec.name))
    for feeds in graph_cases(contract, spec.name, seed):
        got = session.run(feeds)
        want = spec.reference(model, feeds, contract)
        for name in spec.outputs:
            if not np.isfinite(want[name]).all():  # NaN - NaN is no difference at all to np.max and max()
                raise ExportError(f"the checkpoint's own {spec.name} output {name} is not finite (NaN or infinity) "
                                  "in PyTorch: its weights are broken (an uninitialised or damaged tensor)")
            same_shape = got[name].shape == want[name].shape
            if not same_shape or not np.isfinite(got[name]).all():
                diff = float("inf")
            else:
                diff = float(np.max(np.abs(got[name].astype(np.float64) - want[name]))) if want[name].size else 0.0
            result.max_abs_diff[name] = max(result.max_abs_diff.get(name, 0.0), diff)
            cos = cosine_similarity(got[name], want[name]) if same_shape else -1.0
            result.cosine[name] = min(result.cosine.get(name, 1.0), cos)
        result.cases += 1
    return result


def raise_on_failures(results: list[GraphParity]) -> None:
    failures = [line for r in results for line in r.failures]
    if failures:
        raise ParityError(f"parity gate failed for {len(failures)} output(s): " + "; ".join(failures))
