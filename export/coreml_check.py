"""The parity gate of the coreml target, which cannot run what it writes: CoreML prediction needs macOS.

Instead of running the package, two checks, both recorded in the manifest's parity figures next to
`"backend_run": false` and the reason:

(a) the module that was converted (the traced, size-folded torch graph of export/coreml_writer.py)
    against transformers, with the same cases, references and fp32 tolerances as every other target,
    a `TracedSession` standing in for the backend. What this proves: the static wrappers, the rank-5
    vision tower and the folded trace compute what transformers computes. What it cannot: CoreML's
    own numerics (fp16 compute, int8 weights) — those are checked on a Mac (tests/test_coreml.py).
(b) the converted program, read back from the package: every input and output name, shape and dtype
    as the manifest records it, no tensor of rank above 5 anywhere in the program (CoreML's limit),
    and the weights the precision promises (int8: quantized weight ops; fp16/fp32: none).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from runtime.contract import Contract

from .coreml_writer import NAMES_KEY
from .parity import GraphParity, check_graph
from .specs import GraphSpec

REASON = "CoreML prediction needs macOS"
MAX_RANK = 5
QUANTIZED_WEIGHT_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
# MLMultiArray / MIL data type names -> numpy dtype names (what the manifest records).
_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "FLOAT64": "float64",
           "INT32": "int32", "INT64": "int64", "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


@dataclass
class Program:
    """What a converted .mlpackage declares, read from its protobuf spec (no CoreML runtime needed)."""

    inputs: dict[str, dict]  # our name -> {"dtype", "shape", "coreml_name"}, as the interface declares them
    outputs: dict[str, dict]
    max_rank: int  # the highest rank of any tensor in the program (inputs and every op's outputs)
    ops: Counter  # op type -> count, nested blocks included
    weight_dtypes: Counter  # data type of every weight stored in the weights blob -> count
    opset: str  # e.g. "CoreML7" (iOS 17 / macOS 14)
    specification_version: int

    @property
    def quantized_weights(self) -> int:
        return sum(self.ops[op] for op in QUANTIZED_WEIGHT_OPS)

    def to_dict(self) -> dict:
        return {"opset": self.opset, "specification_version": self.specification_version,
                "max_rank": self.max_rank, "ops": sum(self.ops.values()),
                "quantized_weight_ops": self.quantized_weights, "weight_dtypes": dict(self.weight_dtypes)}


def read_program(path: str | Path) -> Program:
    import coremltools as ct
    from coremltools.proto import FeatureTypes_pb2, MIL_pb2

    spec = ct.utils.load_spec(str(path))
    array_type = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
    ours = json.loads(spec.description.metadata.userDefined.get(NAMES_KEY, "{}"))

    def interface(features) -> dict:  # keyed by our name where the package records it
        return {ours.get(f.name, f.name): {"dtype": _DTYPES.get(array_type.Name(f.type.multiArrayType.dataType), "?"),
                                           "shape": [int(d) for d in f.type.multiArrayType.shape],
                                           "coreml_name": f.name} for f in features}

    main = spec.mlProgram.functions["main"]
    ranks = [value.type.tensorType.rank for value in main.inputs]
    ops, weights = Counter(), Counter()
    blocks = [main.block_specializations[main.opset]]
    while blocks:  # nested blocks (cond, while_loop) hold ops too
        block = blocks.pop()
        for op in block.operations:
            ops[op.type] += 1
            ranks += [value.type.tensorType.rank for value in op.outputs if value.type.HasField("tensorType")]
            for attribute in op.attributes.values():
                if attribute.HasField("blobFileValue"):
                    weights[_DTYPES.get(MIL_pb2.DataType.Name(attribute.type.tensorType.dataType), "?")] += 1
            blocks.extend(op.blocks)
    return Program(interface(spec.description.input), interface(spec.description.output), max(ranks, default=0),
                   ops, weights, main.opset, spec.specificationVersion)


def program_problems(program: Program, io: dict, precision: str) -> list[str]:
    """Every way `program` differs from the I/O the manifest records and the limits CoreML sets."""
    problems = []
    for kind in ("inputs", "outputs"):
        got, want = getattr(program, kind), io[kind]
        if list(got) != list(want):
            problems.append(f"{kind} {list(got)}, expected {list(want)}")
        problems += [f"{kind[:-1]} {name}: {got[name]}, expected {record}" for name, record in want.items()
                     if name in got and got[name] != record]
    if program.max_rank > MAX_RANK:
        problems.append(f"a tensor of rank {program.max_rank} (CoreML's limit is {MAX_RANK})")
    if precision == "int8" and not program.quantized_weights:
        problems.append("no quantized weights in an int8 program")
    if precision != "int8" and program.quantized_weights:
        problems.append(f"{program.quantized_weights} quantized weights in a {precision} program")
    return problems


class TracedSession:
    """The traced torch module behind the backend's Session protocol (run(feeds) -> {name: array})."""

    def __init__(self, spec: GraphSpec, traced):
        self.input_names, self.output_names = list(spec.inputs), list(spec.outputs)
        self.device = "cpu"
        self._traced = traced

    @torch.no_grad()
    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        result = self._traced(*(torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.input_names))
        result = dict(zip(self.output_names, result if isinstance(result, tuple) else (result,)))
        return {name: result[name].numpy() for name in outputs or self.output_names}


@dataclass
class CoreMLParity(GraphParity):
    """`GraphParity` of the traced module, plus the program read back; both decide `failures`."""

    program: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    note = "torch module + program read back; CoreML not run here"  # for the export log line

    @property
    def failures(self) -> list[str]:
        return super().failures + [f"{self.graph} program: {problem}" for problem in self.problems]

    def to_dict(self) -> dict:
        return {**super().to_dict(), "backend_run": False, "reason": REASON,
                "checked": "the traced torch module that was converted, against transformers (fp32 tolerances)",
                "program": {**self.program, "io_matches_manifest": not any(p.startswith(("input", "output"))
                                                                              for p in self.problems)},
                "program_problems": self.problems}


def verify(spec: GraphSpec, model, contract: Contract, written, precision: str) -> CoreMLParity:
    """The gate for one written graph (`written`: export/coreml_writer.py's CoreMLGraph)."""
    import coremltools

    traced = check_graph(spec, TracedSession(spec, written.traced), model, contract, precision="fp32")
    program = read_program(written.path)
    return CoreMLParity(**vars(traced), program={**program.to_dict(), "coremltools": coremltools.__version__},
                        problems=program_problems(program, written.io, precision))
