"""coremltools.optimize weight quantization for CoreML ML Programs: `--int8` of the coreml target.

Weights only, data-free: every linear/conv/embedding weight of at least `WEIGHT_THRESHOLD` elements
is stored as int8, symmetric, one scale per output channel, and expanded by a
`constexpr_affine_dequantize` op when the model loads (iOS 17 opset; iOS 18 would emit
`constexpr_blockwise_shift_scale`). Compute stays fp16, so the Neural Engine runs it as before; the
package is about half the fp16 one. Smaller tensors (LayerNorm scales, biases) stay fp16: quantizing
them saves nothing and costs accuracy.

int4 is not offered: linear int4 needs the iOS 18 / macOS 15 opset (per-block scales), and this
target is macOS 14 / iOS 17. 4-bit palettization (`palettize_weights`, a 16-entry LUT per tensor,
iOS 16+) would fit the deployment target, but k-means over every weight of Florence-2-large runs for
many minutes, and its fidelity was not measured: left for a later issue.
"""

from __future__ import annotations

PRECISIONS = ("int8",)
INT4_REFUSAL = ("CoreML int4 weights (constexpr_blockwise_shift_scale) need the iOS 18 / macOS 15 opset; "
                "this target is macOS 14 / iOS 17 (use --int8)")
WEIGHT_THRESHOLD = 2048  # coremltools' default: tensors below it stay fp16


def quantize_weights(mlmodel, precision: str):
    """`mlmodel` (an ML Program) with its weights quantized to `precision` ("int8")."""
    if precision not in PRECISIONS:
        raise ValueError(f"CoreML weight quantization writes {', '.join(PRECISIONS)}, not {precision!r}")
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD))
    return linear_quantize_weights(mlmodel, config)
