"""The table of export targets: one row per target drives CLI validation, file naming and the
backend the parity gate runs. OpenVINO and CoreML join it in their own modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Target:
    name: str
    suffix: str  # graph file suffix
    # (spec, model, example, path, precision=..., **options) -> path. Writes the graph at `precision`
    # (a quantizing target converts, then runs its precision pass on the converted file).
    writer: Callable
    precisions: tuple[str, ...]  # what this target can write; the first is the default
    options: tuple[str, ...]  # target-specific CLI options it accepts
    description: str
    refused: dict[str, str] = field(default_factory=dict)  # precision -> why this target cannot write it


PRECISIONS = ("fp32", "fp16", "int8", "int4")


def _onnx_writer(spec, model, example, path, precision="fp32", opset=None, **_):
    from .onnx_writer import DEFAULT_OPSET, write_onnx

    return write_onnx(spec, model, example, path, opset=opset or DEFAULT_OPSET)


TARGETS: dict[str, Target] = {
    "onnx": Target("onnx", ".onnx", _onnx_writer, ("fp32",), ("opset",),
                   "ONNX graphs for onnxruntime (CPU, and GPU/NPU execution providers)",
                   refused={p: "quantized ONNX export is not implemented yet" for p in ("fp16", "int8", "int4")}),
}
