"""How each graph's int8/int4 is computed, in the manifest's words (runtime/manifest.py QuantizationRecord):

- "dynamic": int8 weights; activations quantized at run time from their own min/max (onnxruntime's
  MatMulInteger path, and MatMulNBits' int8 activations at accuracy level 4);
- "calibrated": int8 weights and activations, activation ranges fixed at export from calibration images;
- "weight-only": low-bit weights decompressed on the fly, float activations (NNCF weight compression,
  coremltools palettization/linear quantization, and a lookup table such as `embed_tokens`).
"""

from __future__ import annotations

METHODS = ("dynamic", "calibrated", "weight-only")
QUANTIZED = ("int8", "int4")


def graph_method(target: str, precision: str, graph: str | None = None, calibrated: bool = False) -> str | None:
    """The method of `graph` at `precision` on `target`; None for a float precision."""
    if precision not in QUANTIZED:
        return None
    if calibrated:
        return "calibrated"
    if target == "onnx" and graph != "embed_tokens":  # embed_tokens is a table lookup: nothing to multiply
        return "dynamic"
    return "weight-only"


def overall_method(methods: dict[str, str]) -> str:
    """One word for the artifact: calibrated if any graph is, else dynamic if any graph is."""
    for method in ("calibrated", "dynamic"):
        if method in methods.values():
            return method
    return "weight-only"
