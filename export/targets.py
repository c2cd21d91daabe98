"""The table of export targets: one row per target drives CLI validation, file naming and the
backend the parity gate runs. OpenVINO and CoreML join it in their own modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Target:
    name: str
    suffix: str  # graph file suffix
    writer: Callable  # (spec, model, example, path, **options) -> path
    precisions: tuple[str, ...]  # what this target can write today; the first is the default
    options: tuple[str, ...]  # target-specific CLI options it accepts
    description: str


def _onnx_writer(spec, model, example, path, opset=None, **_):
    from .onnx_writer import DEFAULT_OPSET, write_onnx

    return write_onnx(spec, model, example, path, opset=opset or DEFAULT_OPSET)


TARGETS: dict[str, Target] = {
    "onnx": Target("onnx", ".onnx", _onnx_writer, ("fp32",), ("opset",),
                   "ONNX graphs for onnxruntime (CPU, and GPU/NPU execution providers)"),
}
