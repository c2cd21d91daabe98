"""Write one graph as a CoreML ML Program (`<name>.mlpackage`), converted from the traced torch wrapper.

Every CoreML graph is fixed-shape (the Neural Engine compiles nothing else): the pipeline always
builds the static specs of export/static_graphs.py — batch 1, the prompt padded to a bucket, and the
decoder's self-attention K/V in fixed buffers of `max_decode` slots with a `position` input; the
graph returns only the new K/V row and the runtime writes it in place (runtime/static_step.py).

Deployment target: macOS 14 / iOS 17. CoreML's own state (`ct.StateType`, the KV cache kept inside
the model and updated in place by the graph) needs macOS 15 / iOS 18. The trade: on macOS 14 the
runtime hands the buffers to every decoder step ([beams, H, max_decode, hd] per layer, ~28 MB a step
at base size with 3 beams and 256 slots), which state would avoid, and int4 weights
(`constexpr_blockwise_shift_scale`, iOS 18 opset) are out of reach; in return the artifacts run on
the Macs, iPhones and iPads of 2023 as well, with the same runtime code as the other static targets.

Precisions (`compute_precision` of `coremltools.convert`; inputs and outputs stay fp32, int ids int32
since CoreML has no int64 input):
    fp16   fp16 weights and compute (the default: what the GPU and the Neural Engine run)
    fp32   fp32 weights and compute (CPU and GPU only; the Neural Engine computes in fp16)
    int8   fp16 compute, weights int8 per channel (quantize/coreml.py)

The vision tower is traced from `rank5_copy` (export/rank5.py): DaViT's rank-6 window partition and
its traced int casts are what stop the converter on the stock module. `torch.jit.trace` +
`coremltools.convert` is the route that converts it (the torch.export route fails on an `alias`
node). CoreML prediction needs macOS, so the parity gate cannot run the package here: it checks the
traced module and reads the converted program back instead (export/coreml_check.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quantize.coreml import INT4_REFUSAL

from .errors import ExportError
from .graphs import Encoder, VisionEncoder, _heads
from .rank5 import rank5_copy
from .specs import GraphSpec

PRECISIONS = ("fp16", "fp32", "int8")
NAMES_KEY = "florence2_edge.names"  # package metadata: JSON {CoreML feature name: our name}
# CoreML input dtypes for the numpy dtypes the specs' examples carry (MLMultiArray has no int64).
_INPUT_DTYPES = {np.dtype(np.float32): np.float32, np.dtype(np.int64): np.int32, np.dtype(np.int32): np.int32}


@dataclass
class CoreMLGraph:
    """What the writer leaves for the gate: the package, the module that was converted, and the
    I/O the program must have ({name: {"dtype", "shape"}} per kind, also written to the manifest)."""

    path: Path
    traced: torch.jit.ScriptModule
    io: dict


class Rank5VisionEncoder(VisionEncoder):
    """`VisionEncoder` over a rank-5 copy of the model (window/channel attention rewritten)."""

    def __init__(self, model):
        nn.Module.__init__(self)
        self.model = rank5_copy(model.model)


class MaskedEncoder(Encoder):
    """`Encoder` with the padding mask built here, as an additive [B, 1, 1, S] select. transformers'
    mask helpers trace to ops the converter lacks (`new_ones`, boolean indexing); the BART layers
    themselves add a float mask to the scores the same way (eager or sdpa)."""

    def forward(self, inputs_embeds, attention_mask):
        encoder = self.encoder
        hidden = inputs_embeds + encoder.embed_positions(inputs_embeds[:, :, -1])
        hidden = encoder.layernorm_embedding(hidden)
        bias = torch.where(attention_mask[:, None, None, :] != 0, 0.0, torch.finfo(torch.float32).min)
        for layer in encoder.layers:
            hidden = layer(hidden, bias)
        outputs = [hidden]
        for attn in self.cross_attn:
            outputs += [_heads(attn.k_proj(hidden), attn.num_heads), _heads(attn.v_proj(hidden), attn.num_heads)]
        return tuple(outputs)


# The graphs whose wrapper differs from export/graphs.py's for CoreML (same weights, same results).
_WRAPPERS = {"vision_encoder": Rank5VisionEncoder, "encoder": MaskedEncoder}


def build_wrapper(spec: GraphSpec, model) -> nn.Module:
    return _WRAPPERS.get(spec.name, spec.wrapper)(model).eval()


def trace(spec: GraphSpec, model, example: dict[str, np.ndarray]) -> tuple[torch.jit.ScriptModule, tuple]:
    """The wrapper traced on `example` (the static shapes), and its outputs on it."""
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[name])) for name in spec.inputs)
    with warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings on shape-dependent branches: every shape is fixed, that is the point.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(build_wrapper(spec, model), args, check_trace=False)
        fold_static_sizes(traced)
        outputs = traced(*args)
    return traced, outputs if isinstance(outputs, tuple) else (outputs,)


def fold_static_sizes(traced: torch.jit.ScriptModule) -> None:
    """Inline the traced graph and fold every `aten::size` into a constant (the trace knows every
    shape, and a CoreML graph is static anyway). Unfolded, a traced size that Python unpacked
    becomes `aten::Int(prim::NumToTensor(size))`, which coremltools 9 cannot convert under NumPy 2
    (it casts a 1-element array with int()). The module keeps running: the gate checks this graph."""
    torch._C._jit_pass_inline(traced.graph)
    torch._C._jit_pass_peephole(traced.graph)
    torch._C._jit_pass_constant_propagation(traced.graph)
    torch._C._jit_pass_dce(traced.graph)


def expected_io(spec: GraphSpec, outputs: tuple) -> dict:
    """The program's I/O as the manifest records it: the contract's names and (static) shapes, CoreML
    dtypes (int64 ids become int32). The traced outputs must have the contract's shapes."""
    if len(outputs) != len(spec.io.outputs):
        raise ExportError(f"{spec.name}: the wrapper returns {len(outputs)} outputs, the contract declares {len(spec.io.outputs)}")
    for tensor, value in zip(spec.io.outputs, outputs):
        if tuple(value.shape) != tensor.shape:
            raise ExportError(f"{spec.name}: the wrapper's {tensor.name} has shape {list(value.shape)}, "
                              f"the contract {list(tensor.shape)}")
    inputs = {t.name: {"dtype": np.dtype(_INPUT_DTYPES[np.dtype(t.dtype)]).name, "shape": list(t.shape)}
              for t in spec.io.inputs}
    results = {t.name: {"dtype": "float32", "shape": list(t.shape)} for t in spec.io.outputs}
    return {"inputs": inputs, "outputs": results}


def write_coreml(spec: GraphSpec, model, example: dict[str, np.ndarray], path: Path,
                 precision: str = "fp16") -> CoreMLGraph:
    """Trace `spec`'s wrapper of `model` on `example`, convert it at `precision`, save it at `path`."""
    if precision not in PRECISIONS:
        raise ExportError(f"the coreml target writes {', '.join(PRECISIONS)}, not {precision}"
                          + (f": {INT4_REFUSAL}" if precision == "int4" else ""))
    traced, outputs = trace(spec, model, example)
    interface = expected_io(spec, outputs)
    with _quiet_converter():
        import coremltools as ct

        inputs = [ct.TensorType(name=name, shape=tuple(record["shape"]), dtype=np.dtype(record["dtype"]).type)
                  for name, record in interface["inputs"].items()]
        mlmodel = ct.convert(
            traced, inputs=inputs, outputs=[ct.TensorType(name=name, dtype=np.float32) for name in spec.outputs],
            convert_to="mlprogram", minimum_deployment_target=ct.target.macOS14,
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            skip_model_load=True,  # loading compiles the model: macOS only, and the gate does not run it
        )
        if precision == "int8":
            from quantize.coreml import quantize_weights

            mlmodel = quantize_weights(mlmodel, precision)
    name_features(mlmodel, interface)
    mlmodel.short_description = f"Florence-2 {spec.name} ({precision}, florence2-edge)"
    mlmodel.save(str(path))
    return CoreMLGraph(Path(path), traced, interface)


def name_features(mlmodel, interface: dict) -> None:
    """coremltools turns `past.0.key` into `past_0_key` (MIL names are identifiers). Keep CoreML's
    names, record ours beside them: in the manifest (`coreml_name` per input/output) and in the
    package's metadata, which platforms/coreml.py reads to accept and return our names."""
    description = mlmodel.get_spec().description
    names = {}
    for kind, features in (("inputs", description.input), ("outputs", description.output)):
        if len(features) != len(interface[kind]):
            raise ExportError(f"the converted program has {len(features)} {kind}, the spec declares {len(interface[kind])}")
        for feature, (name, record) in zip(features, interface[kind].items()):
            record["coreml_name"], names[feature.name] = feature.name, name
    mlmodel.user_defined_metadata[NAMES_KEY] = json.dumps(names)


@contextlib.contextmanager
def _quiet_converter():
    """coremltools draws a progress bar per pass on stderr and logs import-time warnings (no native
    runtime on Linux, untested torch version): not the user's concern, our log says what happens.
    Its errors still reach the log, and exceptions still raise."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
