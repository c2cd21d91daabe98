"""The table of export targets: one row per target drives CLI validation, file naming and the
backend the parity gate runs. OpenVINO and CoreML join it in their own modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from quantize import coreml as coreml_quantize


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
    weights_suffix: str | None = None  # a second file per graph (OpenVINO's .bin), recorded as "weights"
    gate_session: dict = field(default_factory=dict)  # open_session options for the parity gate
    static: bool = False  # every graph fixed-shape (export/static_graphs.py), --static or not
    # For a backend that cannot run here (CoreML needs macOS): (spec, model, contract, written, precision)
    # -> GraphParity, given what the writer returned; the gate then runs no session.
    verify: Callable | None = None


PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")


def _onnx_writer(spec, model, example, path, precision="fp32", opset=None, calibration=None, **_):
    from .onnx_writer import DEFAULT_OPSET, write_onnx

    if precision == "fp32":
        return write_onnx(spec, model, example, path, opset=opset or DEFAULT_OPSET)
    from quantize.onnx import quantize_onnx

    # The precision pass reads an fp32 graph: export one to a scratch file, quantize it into `path`.
    from .owners import scratch_folder

    with scratch_folder("fp32") as scratch:  # named after this process: swept if it is killed
        fp32 = write_onnx(spec, model, example, Path(scratch) / Path(path).name, opset=opset or DEFAULT_OPSET)
        table = tuple(model.get_input_embeddings().weight.shape)  # the tied word embedding, [V, d]
        return quantize_onnx(fp32, Path(path), precision, spec.name, table_shape=table, calibration=calibration)


def _openvino_writer(spec, model, example, path, precision="fp32", calibration=None, **_):
    from .openvino_writer import write_openvino

    return write_openvino(spec, model, example, path, precision=precision, calibration=calibration)


def _coreml_writer(spec, model, example, path, precision="fp16", **_):
    from .coreml_writer import write_coreml

    return write_coreml(spec, model, example, path, precision=precision)


def _coreml_verify(spec, model, contract, written, precision="fp16"):
    from .coreml_check import verify

    return verify(spec, model, contract, written, precision)


COREML_INT4_REFUSAL = coreml_quantize.INT4_REFUSAL
BF16_REFUSAL = "bf16 is an OpenVINO compute precision (--target openvino --bf16)"


TARGETS: dict[str, Target] = {
    "onnx": Target("onnx", ".onnx", _onnx_writer, ("fp32", "fp16", "int8", "int4"), ("opset", "static", "mobile"),
                   "ONNX graphs for onnxruntime (CPU, and GPU/NPU execution providers)",
                   refused={"bf16": "onnxruntime's CPU provider has no bf16 kernels for these graphs; "
                                    "use --target openvino --bf16"}),
    # fp16: fp16 weights, upcast at load; bf16: the same file, run with bf16 compute (the gate and the
    # runtime pass inference_precision from the manifest: platforms/openvino.py); int8/int4: NNCF
    # weight compression, or with --calibration calibrated int8 (quantize/openvino.py).
    # The gate compiles from the staging folder: no compile cache for blobs nobody will load again.
    "openvino": Target("openvino", ".xml", _openvino_writer, ("fp32", "fp16", "bf16", "int8", "int4"), ("static",),
                       "OpenVINO IR for CPU, GPU and NPU (--static for the NPU)",
                       weights_suffix=".bin", gate_session={"cache_dir": None}),
    # ML Programs for macOS 14 / iOS 17, always fixed-shape (the Neural Engine compiles nothing else).
    # fp16 compute by default; int8: int8 weights on fp16 compute (quantize/coreml.py). Prediction
    # needs macOS: the gate checks the converted torch module and reads the program back instead.
    "coreml": Target("coreml", ".mlpackage", _coreml_writer, ("fp16", "fp32", "int8"), ("static",),
                     "CoreML ML Programs for Apple silicon: CPU, GPU and Neural Engine (macOS 14 / iOS 17)",
                     refused={"int4": COREML_INT4_REFUSAL, "bf16": BF16_REFUSAL}, static=True, verify=_coreml_verify),
}
