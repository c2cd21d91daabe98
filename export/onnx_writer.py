"""Write one graph as ONNX with torch.onnx.export (dynamo), dims named as the spec declares them."""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from .specs import GraphSpec
from .onnx_rewrites import rewrite_file

DEFAULT_OPSET = 18
log = logging.getLogger("export")


def _dynamic_shapes(wrapper, spec: GraphSpec):
    """torch.export wants one entry per positional parameter; a `*cache` parameter takes a tuple."""
    from torch.export import Dim

    shapes = [{axis: Dim.DYNAMIC for axis in axes} for axes in spec.inputs.values()]
    params = list(inspect.signature(wrapper.forward).parameters.values())
    if params and params[-1].kind is inspect.Parameter.VAR_POSITIONAL:
        fixed = len(params) - 1
        return (*shapes[:fixed], tuple(shapes[fixed:]))
    return tuple(shapes)


def _name_dims(path: Path, spec: GraphSpec) -> None:
    """Replace the exporter's dim names (s17, s53 + 1...) by the spec's (batch, past_sequence...), so a
    reader of the graph, and the manifest, see what each axis means."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    declared = {**spec.inputs, **spec.outputs}
    renames: dict[str, str] = {}
    for value in list(model.graph.input) + list(model.graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            symbol = declared.get(value.name, {}).get(axis)
            if symbol and dim.dim_param:
                renames.setdefault(dim.dim_param, symbol)
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]
    onnx.save(model, str(path))


def write_onnx(spec: GraphSpec, model, example: dict[str, np.ndarray], path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export `spec`'s wrapper of `model`, traced on `example` (sizes other than 0 and 1 on every
    dynamic axis, so the exporter does not specialise them)."""
    wrapper = spec.wrapper(model).eval()
    args = tuple(torch.from_numpy(example[name]) for name in spec.inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's concern
        torch.onnx.export(
            wrapper, args, str(path),
            input_names=list(spec.inputs), output_names=list(spec.outputs),
            dynamic_shapes=_dynamic_shapes(wrapper, spec), opset_version=opset,
            dynamo=True, external_data=False, verbose=False,
        )
    _name_dims(path, spec)
    rewrite_file(path)  # exact rewrites that let onnxruntime fuse GELU at load (export/onnx_rewrites.py)
    return path
