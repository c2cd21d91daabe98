"""NNCF weight compression for OpenVINO IR: `--int8` and `--int4` of the openvino target.

Weights only, data-free: MatMul/Gather weights are stored as int8 (or int4 in groups) with scales
and decompressed on the fly by OpenVINO's kernels; activations stay float, so the runtime is
unchanged. int4 keeps the embedding table and the last MatMul (the tied LM head) in int8
(NNCF's default for `all_layers=False`): those are where 4 bits cost the most.
"""

from __future__ import annotations

import contextlib
import io
import logging

PRECISIONS = ("int8", "int4")
INT4_GROUP_SIZE = 128  # divides every width of Florence-2 base/large; smaller models adjust (below)


def compress(ov_model, precision: str):
    """`ov_model` with its weights compressed to `precision` ("int8" | "int4"); other precisions
    raise ValueError (fp32 needs no pass, fp16 is a save option of the writer)."""
    if precision not in PRECISIONS:
        raise ValueError(f"NNCF weight compression writes {', '.join(PRECISIONS)}, not {precision!r}")
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters

    nncf.set_log_level(logging.ERROR)  # per-layer statistics tables are not the user's concern
    if precision == "int8":
        options = dict(mode=nncf.CompressWeightsMode.INT8_ASYM)
    else:
        # ASYM: a zero point per group follows the skewed weight ranges of the projections better
        # than SYM at the same size; CPU and GPU have kernels for both. ratio 1: every eligible layer.
        options = dict(mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=INT4_GROUP_SIZE, ratio=1.0,
                       advanced_parameters=AdvancedCompressionParameters(
                           group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST))
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bar: the exporter logs per graph
        return nncf.compress_weights(ov_model, **options)


def calibrate(ov_model, feeds: list[dict]):
    """Calibrated int8 (`--int8 --calibration`): `nncf.quantize` inserts FakeQuantize on the inputs and
    weights of MatMul/Conv with ranges measured on `feeds` (one inference each). TRANSFORMER model type:
    NNCF's attention-aware scheme (Softmax, LayerNorm and the attention score MatMuls' sensitive
    inputs stay float; the same choice quantize/onnx_calibrated.py makes for ONNX)."""
    import nncf

    if not feeds:
        raise ValueError("calibrated int8 needs at least one calibration feed")
    nncf.set_log_level(logging.ERROR)
    names = {port.get_any_name() for port in ov_model.inputs}
    dataset = nncf.Dataset([{k: v for k, v in feed.items() if k in names} for feed in feeds])
    # The stem conv (the first convolution, on raw pixels) stays float, as in the ONNX pass: the vision
    # tower's least cosine on the gate's inputs 0.99731 -> 0.99875 (px128, 8 builtin images).
    convs = [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    ignored = nncf.IgnoredScope(names=convs[:1], validate=False)
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(ov_model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
                             preset=nncf.QuantizationPreset.MIXED, ignored_scope=ignored)
