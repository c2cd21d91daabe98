"""Calibrated int8 for ONNX graphs (`--int8 --calibration`): onnxruntime's `quantize_static` in QDQ form.

Weights int8 per output channel; activations uint8 per tensor with ranges measured (MinMax) on the
calibration feeds instead of computed at run time, so each MatMul/Conv runs without the
DynamicQuantizeLinear (a min/max pass over its input) that dynamic int8 puts before it.

Only MatMul (constant weights), Gemm and Conv get QuantizeLinear/DequantizeLinear pairs: LayerNorm,
Softmax, GELU and the residual adds stay fp32 by construction, and attention's activation x activation
MatMuls too (MatMulConstBOnly), as in the dynamic pass. Which graphs get calibration feeds is
export/calibration.py's CALIBRATED_GRAPHS; `KEEP_FP32` names module scopes left fp32 in them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

# Graph -> module scopes kept fp32 under calibration (fnmatch patterns, as GraphPolicy.keep_fp32).
# The stem conv (patch embedding of raw pixels, whose per-tensor input range is the widest of the tower):
# measured on the 128 px tiny checkpoint, 8 builtin images, least cosine on the gate's inputs:
#   everything calibrated 0.99919;  stem conv fp32 0.99976 (+40 KB);  stem conv + stage 0 fp32 0.99977
# (dynamic int8, whose ranges follow each input: 0.99998). LayerNorm and Softmax need no entry: only
# OP_TYPES are quantized. The encoder calibrated measured 0.99944 (dynamic 0.99995): above its floor.
KEEP_FP32: dict[str, tuple[str, ...]] = {"vision_encoder": ("model.vision_tower.convs.0",)}
OP_TYPES = ["MatMul", "Gemm", "Conv"]


class FeedsReader:
    """onnxruntime's CalibrationDataReader over a list of feed dicts (one run each)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], names: set[str]):
        self._feeds = [{k: v for k, v in f.items() if k in names} for f in feeds]
        self._next = 0

    def get_next(self):
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def rewind(self):
        self._next = 0


def calibrated_int8(model: onnx.ModelProto, keep: list[str], feeds: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    """`model` with QDQ int8 MatMul/Gemm/Conv, activation ranges measured on `feeds`; nodes in `keep` stay fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .quiet import quiet_quantizers

    if not feeds:
        raise ValueError("calibrated int8 needs at least one calibration feed")
    names = {i.name for i in model.graph.input}
    # Named after this process, as quantize/onnx.py names its scratch files: swept if the export is killed.
    with tempfile.TemporaryDirectory(prefix=f"florence2-q-{os.getpid()}-") as scratch:
        source, out = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        onnx.save(model, str(source))  # quantize_static runs an augmented copy in onnxruntime: from a file
        with quiet_quantizers():
            quantize_static(str(source), str(out), FeedsReader(feeds, names), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=OP_TYPES, per_channel=True, reduce_range=False,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=keep, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"MatMulConstBOnly": True, "CalibTensorRangeSymmetric": False})
        return onnx.load(str(out))
