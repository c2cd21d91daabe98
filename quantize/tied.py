"""The word embedding, quantized on purpose and stored once.

Florence-2 ties the decoder's lm_head to the word embedding ([V, d], 39.4M values at base size: 158 MB
in fp32). The exported graphs use it three times: `embed_tokens` gathers prompt rows, the decoder
gathers the next token's row and multiplies by its transpose for the logits. Public ONNX exports keep
it in fp32 and store it twice. Here:

- int8: one symmetric int8 table laid out [d, V] with one scale per vocabulary row. The decoder's
  logits are DynamicQuantizeLinear -> MatMulInteger on it (what onnxruntime's dynamic quantization
  builds for any MatMul, fused into DynamicQuantizeMatMul at load); the row lookups are a Gather along
  axis 1 of the same table, then a cast and the row's scale.
- int4: one MatMulNBits table ([V, blocks, block/2] uint8, asymmetric, zero points) for the logits,
  and GatherBlockQuantized on the same bytes for the lookups (uint8 data follows MatMulNBits' layout).

Either way the decoder holds the table once, and `share_tables` moves it out of the graph into a file
named by its content, so `embed_tokens` and `decoder` (which build byte-identical tables from the same
weight) reference one copy on disk.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"


@dataclass
class TableUses:
    name: str  # the fp32 initializer, [V, d]
    gathers: list  # Gather nodes reading rows of it (axis 0)
    matmuls: list  # (Transpose node, MatMul node): logits = hidden @ table^T


def find_tables(model: onnx.ModelProto, shape: tuple[int, int]) -> list[TableUses]:
    """The initializers of `shape` ([V, d]: the word embedding; two if a fine-tune unties lm_head)
    and how the graph uses each."""
    names = [i.name for i in model.graph.initializer if tuple(i.dims) == tuple(shape) and i.data_type == TensorProto.FLOAT]
    return [table_uses(model, name) for name in names]


def other_tables(model: onnx.ModelProto, exclude: set[str]) -> list[TableUses]:
    """Every other 2-D float initializer read by row Gathers only (the learned position embeddings)."""
    floats = {i.name for i in model.graph.initializer if len(i.dims) == 2 and i.data_type == TensorProto.FLOAT}
    names = {n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in floats} - exclude
    tables = [table_uses(model, name) for name in sorted(names)]
    return [t for t in tables if not t.matmuls]


def table_uses(model: onnx.ModelProto, name: str) -> TableUses:
    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for value in node.input:
            consumers.setdefault(value, []).append(node)
    uses = TableUses(name, [], [])
    for node in consumers.get(name, []):
        if node.op_type == "Gather" and node.input[0] == name and _attr(node, "axis", 0) == 0:
            uses.gathers.append(node)
        elif node.op_type == "Transpose" and list(_attr(node, "perm", [1, 0])) == [1, 0]:
            after = consumers.get(node.output[0], [])
            if not after or any(n.op_type != "MatMul" or n.input[1] != node.output[0] for n in after):
                raise ValueError(f"the transpose of {name} feeds something other than a MatMul's weight")
            uses.matmuls += [(node, matmul) for matmul in after]
        else:
            raise ValueError(f"unexpected use of the word embedding {name}: {node.op_type} {node.name}")
    return uses


def _attr(node, name, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _rank_of(model: onnx.ModelProto, value: str) -> int:
    for info in list(model.graph.input) + list(model.graph.value_info):
        if info.name == value and info.type.tensor_type.HasField("shape"):
            return len(info.type.tensor_type.shape.dim)
    raise ValueError(f"the rank of {value} is unknown: cannot rewrite its embedding lookup")


def _replace(model: onnx.ModelProto, old: list, new: list) -> None:
    """Put `new` nodes where the first of `old` was (keeps a topological order), drop `old`."""
    names = {n.name for n in old}  # by name: the graph's node messages are copies after an edit
    nodes = list(model.graph.node)
    at = min(i for i, n in enumerate(nodes) if n.name in names)
    kept = [n for n in nodes if n.name not in names]
    kept[at:at] = new
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _drop_initializer(model: onnx.ModelProto, name: str) -> None:
    for field in (model.graph.initializer, model.graph.value_info):
        for index, item in enumerate(field):
            if item.name == name:
                del field[index]
                break


def int8_table(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: ([V, d] int8, [V] float32 scales); row v ~= table[v] * scale[v]."""
    scale = np.abs(weight).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    quantized = np.clip(np.rint(weight / scale[:, None]), -127, 127).astype(np.int8)
    return quantized, scale.astype(np.float32)


def int4_table(weight: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MatMulNBits' asymmetric 4-bit layout for logits = h @ weight^T: packed [V, blocks, block/2]
    uint8, scales [V, blocks], zero points [V, ceil(blocks/2)] (two per byte)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    rows, depth = weight.shape  # V, d
    if depth % block_size:
        raise ValueError(f"the embedding width {depth} is not a multiple of the int4 block size {block_size}")
    blocks = depth // block_size
    packed = np.zeros((rows, blocks, block_size // 2), dtype=np.uint8)
    scales = np.zeros((rows, blocks), dtype=np.float32)
    zero_points = np.zeros((rows, (blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, np.ascontiguousarray(weight.T, dtype=np.float32), scales, zero_points,
                          block_size, rows, depth, False)
    return packed, scales, zero_points


def rewrite_int8(model: onnx.ModelProto, uses: TableUses, prefix: str = "embedding", columns: bool = True) -> None:
    """Replace the table by per-row int8. `columns` stores it [d, V] (MatMulInteger's layout for the
    logits; row lookups gather along axis 1); otherwise [V, d] (row lookups only)."""
    if uses.matmuls and not columns:
        raise ValueError(f"{uses.name} feeds a MatMul: it must be stored as columns")
    weight = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == uses.name))
    table, scale = int8_table(weight)
    if columns:
        table = np.ascontiguousarray(table.T)
    table_name, scale_name = f"{prefix}.int8", f"{prefix}.int8.scale"
    model.graph.initializer.extend([numpy_helper.from_array(table, table_name), numpy_helper.from_array(scale, scale_name)])
    for n, (transpose, matmul) in enumerate(uses.matmuls):
        p = f"{prefix}_logits{n}"
        hidden, out = matmul.input[0], matmul.output[0]
        _replace(model, [transpose, matmul], [
            helper.make_node("DynamicQuantizeLinear", [hidden], [f"{p}_q", f"{p}_qs", f"{p}_qz"], name=f"{p}_quantize"),
            helper.make_node("MatMulInteger", [f"{p}_q", table_name, f"{p}_qz"], [f"{p}_int"], name=f"{p}_matmul"),
            helper.make_node("Cast", [f"{p}_int"], [f"{p}_float"], to=TensorProto.FLOAT, name=f"{p}_cast"),
            helper.make_node("Mul", [f"{p}_qs", scale_name], [f"{p}_scale"], name=f"{p}_scales"),
            helper.make_node("Mul", [f"{p}_float", f"{p}_scale"], [out], name=f"{p}_rescale"),
        ])
    for n, gather in enumerate(uses.gathers):
        p, ids, out = f"{prefix}_rows{n}", gather.input[1], gather.output[0]
        if columns:  # [d, V] gathered on axis 1 -> [d, *ids]; move d last.
            rank = _rank_of(model, ids)
            lookup = [helper.make_node("Gather", [table_name, ids], [f"{p}_q"], axis=1, name=f"{p}_gather"),
                      helper.make_node("Transpose", [f"{p}_q"], [f"{p}_qt"], perm=[*range(1, rank + 1), 0],
                                       name=f"{p}_transpose")]
        else:
            lookup = [helper.make_node("Gather", [table_name, ids], [f"{p}_qt"], axis=0, name=f"{p}_gather")]
        _replace(model, [gather], lookup + [
            helper.make_node("Cast", [f"{p}_qt"], [f"{p}_float"], to=TensorProto.FLOAT, name=f"{p}_cast"),
            helper.make_node("Gather", [scale_name, ids], [f"{p}_s"], axis=0, name=f"{p}_gather_scale"),
            helper.make_node("Unsqueeze", [f"{p}_s", f"{p}_axis"], [f"{p}_s1"], name=f"{p}_unsqueeze"),
            helper.make_node("Mul", [f"{p}_float", f"{p}_s1"], [out], name=f"{p}_rescale"),
        ])
        model.graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{p}_axis"))
    _drop_initializer(model, uses.name)


def rewrite_int4(model: onnx.ModelProto, uses: TableUses, block_size: int, accuracy_level: int,
                 prefix: str = "embedding") -> None:
    weight = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == uses.name))
    vocab, depth = weight.shape
    packed, scales, zero_points = int4_table(weight, block_size)
    blocks = packed.shape[1]
    names = {k: f"{prefix}.int4{k}" for k in ("", ".scales", ".zero_points", ".scales3", ".zero_points3")}
    # GatherBlockQuantized reads the packed bytes as [V, blocks, block]: one block per row of the last
    # axis, so it wants scales and (unpacked) zero points as [V, blocks, 1].
    unpacked = np.stack([zero_points & 0x0F, zero_points >> 4], axis=-1).reshape(vocab, -1)[:, :blocks]
    model.graph.initializer.append(numpy_helper.from_array(packed, names[""]))
    if uses.matmuls:
        model.graph.initializer.extend([numpy_helper.from_array(scales, names[".scales"]),
                                        numpy_helper.from_array(zero_points, names[".zero_points"])])
    if uses.gathers:
        model.graph.initializer.extend([
            numpy_helper.from_array(scales.reshape(vocab, blocks, 1), names[".scales3"]),
            numpy_helper.from_array(unpacked.reshape(vocab, blocks, 1).astype(np.uint8), names[".zero_points3"])])
    for n, (transpose, matmul) in enumerate(uses.matmuls):
        _replace(model, [transpose, matmul], [helper.make_node(
            "MatMulNBits", [matmul.input[0], names[""], names[".scales"], names[".zero_points"]], [matmul.output[0]],
            name=f"{prefix}_logits{n}", domain=MS_DOMAIN, K=depth, N=vocab, bits=4, block_size=block_size,
            **({"accuracy_level": accuracy_level} if accuracy_level else {}))])
    for n, gather in enumerate(uses.gathers):
        p, ids, out = f"{prefix}_rows{n}", gather.input[1], gather.output[0]
        rank = _rank_of(model, ids)
        _replace(model, [gather], [
            helper.make_node("GatherBlockQuantized", [names[""], ids, names[".scales3"], names[".zero_points3"]],
                             [f"{p}_blocks"], name=f"{p}_gather", domain=MS_DOMAIN, gather_axis=0, quantize_axis=2,
                             block_size=block_size, bits=4),
            helper.make_node("Reshape", [f"{p}_blocks", f"{p}_shape"], [out], name=f"{p}_reshape"),
        ])
        model.graph.initializer.append(numpy_helper.from_array(np.array([0] * rank + [depth], dtype=np.int64), f"{p}_shape"))
    _drop_initializer(model, uses.name)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def share_tables(model: onnx.ModelProto, folder: Path, names: set[str]) -> list[str]:
    """Store the initializers in `names` as external data in files named by their content, written
    once: graphs holding the same bytes reference the same file. Returns the file names used."""
    used = []
    for init in model.graph.initializer:
        if init.name not in names or init.data_location == TensorProto.EXTERNAL:
            continue
        raw = init.raw_data if init.HasField("raw_data") else numpy_helper.to_array(init).tobytes()
        file = f"shared-{hashlib.sha256(raw).hexdigest()[:16]}.bin"
        path = folder / file
        if not path.exists():
            path.write_bytes(raw)
        array_fields = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")
        for field in ("raw_data", *array_fields):
            init.ClearField(field)
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        for key, value in (("location", file), ("offset", "0"), ("length", str(len(raw)))):
            init.external_data.add(key=key, value=value)
        used.append(file)
    return sorted(set(used))
