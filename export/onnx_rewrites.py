"""Exact rewrites of exported ONNX graphs that let onnxruntime fuse them at load.

torch.onnx (opset < 20) writes exact GELU as x * (0.5 * (1 + erf(x / sqrt 2))). onnxruntime's
GeluFusion only matches the association (x * (1 + erf(x / sqrt 2))) * 0.5, so it leaves five
elementwise passes over the MLP's widest activation (4 x d per token; 72 MB each at base size in
the vision tower's first stage). Re-associating is exact in float32 (scaling by 0.5 commutes with
rounding), and onnxruntime then fuses the pattern, with the MatMul bias, into one BiasGelu node.
Measured on the base-shape vision tower: peak activation memory 470 -> 400 MB, fewer CPU seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _scalar(inits: dict, name: str) -> float | None:
    from onnx import numpy_helper

    tensor = inits.get(name)
    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def reassociate_gelu(model) -> int:
    """Rewrites every Mul(x, Mul(0.5, Add(Erf(Div(x, c)), 1))) in place as Mul(Mul(x, Add(...)), 0.5).
    Node names and metadata are kept. Returns how many GELUs were rewritten."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    count = 0
    for outer in graph.node:
        if outer.op_type != "Mul" or len(outer.input) != 2:
            continue
        for x_index in (0, 1):
            x, half_out = outer.input[x_index], outer.input[1 - x_index]
            half = producer.get(half_out)
            if half is None or half.op_type != "Mul" or consumers.get(half_out) != 1:
                continue  # the 0.5 * (...) product is used elsewhere too: rewriting would change that use
            halves = [i for i in half.input if _scalar(inits, i) == 0.5]
            if len(halves) != 1:
                continue
            add_out = half.input[1] if half.input[0] == halves[0] else half.input[0]
            add = producer.get(add_out)
            if add is None or add.op_type != "Add":
                continue
            erf = next((producer[i] for i in add.input if i in producer and producer[i].op_type == "Erf"), None)
            if erf is None or not any(_scalar(inits, i) == 1.0 for i in add.input):
                continue
            div = producer.get(erf.input[0])
            if div is None or div.op_type != "Div" or div.input[0] != x:
                continue
            if not np.isclose(_scalar(inits, div.input[1]) or 0.0, np.sqrt(2.0), rtol=1e-6):
                continue
            half.input[:] = [x, add_out]  # x * (1 + erf(...))
            outer.input[:] = [half_out, halves[0]]  # ... * 0.5
            count += 1
            break
    return count


def rewrite_file(path: Path) -> int:
    """Applies the rewrites to a graph file in place (weights inside the file, as write_onnx saves them)."""
    import onnx

    model = onnx.load(str(path))
    count = reassociate_gelu(model)
    if count:
        onnx.save(model, str(path))
    return count
