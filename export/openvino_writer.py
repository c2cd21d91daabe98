"""Write one graph as OpenVINO IR (`<name>.xml` + `<name>.bin`), converted from the torch wrapper.

`openvino.convert_model(wrapper, example_input=..., input=[(shape, type), ...])` traces the same
nn.Module the ONNX writer exports, with -1 on the spec's dynamic axes and fixed sizes elsewhere
(so a `--static` graph is fully static, as an NPU needs). Measured against the other routes
(ONNX via torch.onnx.export + convert_model, and torch.export + convert_model), it converts every
graph at tiny and base shapes, is the fastest of the three, and is the only one that keeps the
fixed axes fixed (torch.export leaves e.g. the pixel height and d_model dynamic). Tracing bakes
Python-level branches at the example's sizes; the parity gate runs the IR on other sizes than the
example's (batch, prompt length, cache length, beams), which is what catches a baked shape.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import ExportError
from .specs import GraphSpec

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")


def write_openvino(spec: GraphSpec, model, example: dict[str, np.ndarray], path: Path, precision: str = "fp32",
                   calibration: list[dict] | None = None) -> Path:
    """Convert `spec`'s wrapper of `model` (traced on `example`), compress its weights for int8/int4,
    and save it at `path` (.xml; the .bin beside it). fp16 stores fp16 weights (upcast at load); so
    does bf16, whose bf16 is the compute precision the runtime asks OpenVINO for (INFERENCE_PRECISION_HINT). `calibration`
    (int8): calibrated int8 of weights and activations (quantize/openvino.py calibrate)."""
    ov = _import("openvino", "pip install 'florence2-edge[openvino]'")
    ov_model = convert(spec, model, example)
    if calibration is not None and precision == "int8":
        from quantize.openvino import calibrate

        _import("nncf", "--int8 --calibration quantizes with NNCF: pip install nncf")
        ov_model = calibrate(ov_model, calibration)
    elif precision in ("int8", "int4"):
        from quantize.openvino import compress

        _import("nncf", "--int8/--int4 compress weights with NNCF: pip install nncf")
        ov_model = compress(ov_model, precision)
    elif precision not in ("fp32", "fp16", "bf16"):
        raise ExportError(f"the openvino target writes {', '.join(PRECISIONS)}, not {precision}")
    ov.save_model(ov_model, str(path), compress_to_fp16=precision in ("fp16", "bf16"))
    return path


def _import(module: str, hint: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ExportError(f"the openvino target needs {module}: {hint}") from None


def convert(spec: GraphSpec, model, example: dict[str, np.ndarray]):
    """The wrapper as an `ov.Model` whose inputs and outputs carry the spec's names."""
    import openvino as ov

    wrapper = spec.wrapper(model).eval()
    args = tuple(torch.from_numpy(example[name]) for name in spec.inputs)
    inputs = [(ov.PartialShape([-1 if axis in axes else size for axis, size in enumerate(example[name].shape)]),
               ov.Type.i64 if example[name].dtype == np.int64 else ov.Type.f32)
              for name, axes in spec.inputs.items()]
    with warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings about shape-dependent branches in transformers' code: the parity gate,
        # run on sizes other than the example's, is the check that matters.
        warnings.simplefilter("ignore")
        # Traced here rather than by convert_model, which also re-runs the module to check the
        # trace: ~40% of the conversion time, for a check the parity gate makes anyway.
        traced = torch.jit.trace(wrapper, args, check_trace=False)
        ov_model = ov.convert_model(traced, example_input=args, input=inputs)
    _name_ports(ov_model, spec)
    return ov_model


def _name_ports(ov_model, spec: GraphSpec) -> None:
    """Tracing names inputs after Python parameters (`cache`, `cache.1`...) and outputs by number."""
    for kind, ports, names in (("inputs", ov_model.inputs, list(spec.inputs)), ("outputs", ov_model.outputs, list(spec.outputs))):
        if len(ports) != len(names):
            raise ExportError(f"{spec.name}: the converted graph has {len(ports)} {kind}, the spec declares {len(names)}")
        for port, name in zip(ports, names):
            port.get_tensor().set_names({name})
            port.get_node().set_friendly_name(name)
