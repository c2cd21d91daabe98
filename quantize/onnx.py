"""ONNX precision passes: an fp32 graph file in, a fp16 / int8 / int4 graph file out.

    quantize_onnx(fp32_path, out_path, "int8", graph="decoder", table_shape=(V, d))

- int8: onnxruntime dynamic quantization (MatMulInteger; int8 weights per output channel, uint8
  activations quantized per tensor at run time).
- int4: MatMulNBits (block-wise asymmetric 4-bit weights, see INT4_BLOCK_SIZE / INT4_ACCURACY_LEVEL).
- fp16: every float tensor in fp16 except the graph's inputs and outputs (fp32 stays the I/O type).
The tied word embedding is handled by `quantize.tied` in every graph that uses it; `POLICY` says
which pass each graph gets at each precision and which of its modules stay fp32.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from . import tied
from .methods import graph_method
from .quiet import quiet_quantizers as _quiet

# Block size: 32 values share a scale and a zero point (4 + 1.1 bits per weight). Measured on the
# base-shape decoder (all int4): cosine of logits 0.957 at 32, 0.947 at 64, 0.943 at 128; the decoder
# is memory-bound and 32 costs 0.9 bit per weight more than 128: fidelity is the scarcer of the two.
INT4_BLOCK_SIZE = 32
# accuracy_level 4: MatMulNBits quantizes activations to int8 per block and uses the CPU's int8 dot
# products (VNNI/AMX); 0 computes in fp32. Measured: same cosine to 4 decimals, level 0 ~3x slower.
INT4_ACCURACY_LEVEL = 4
# int8 decoder weights (GraphPolicy.blocks): MatMulNBits with 8-bit symmetric blocks of 128 at the same
# accuracy level. A decoder step multiplies one row per beam by each weight: a matrix-vector product
# bound by the bytes it reads, for which MatMulNBits has kernels and MatMulInteger's GEMM does not.
# Measured on embedded:base's decoder (2 cores, AVX-512 VNNI + AMX, one greedy step over 20 cached
# tokens): onnxruntime's profile puts its layer MatMuls at ~6.3 ms as DynamicQuantizeMatMul and 3.8 ms
# as MatMulNBits (5.6 ms at block 32); a whole step, 6 interleaved rounds of 40, median 13.1 -> 11.4 ms
# (min 11.3 -> 11.1: the machine is noisy). The gate's logits cosine 0.99939 -> 0.99946. Cost: +31 MB
# resident (MatMulNBits keeps a packed copy). The tied LM head stays MatMulInteger: as 8-bit
# MatMulNBits it measured the same (7-10 ms either way for the 51289 x 768 table alone, under load).
INT8_BLOCK_SIZE = 128


@dataclass(frozen=True)
class GraphPolicy:
    precision: str  # the pass the graph gets: fp32 | fp16 | int8 | int4
    keep_fp32: tuple[str, ...] = ()  # module scopes (torch names) whose nodes are left in fp32
    conv: bool = False  # int8: quantize Conv weights too (ConvInteger)
    table: str | None = None  # int8/int4 graphs: the word embedding's precision, if not the graph's
    int8: tuple[str, ...] = ()  # int4 graphs: module scopes quantized to int8 instead
    blocks: bool = False  # int8 weight MatMuls as 8-bit MatMulNBits blocks (INT8_BLOCK_SIZE), not MatMulInteger


_ATTENTION = ("decoder.layers.*.self_attn", "decoder.layers.*.encoder_attn")

# Which pass each graph gets. Measured on embedded:base (random weights), each graph quantized alone,
# least cosine to fp32 over its outputs on the parity gate's inputs (decoder: its logits), and file size:
#   vision_encoder  int8 0.99974 (0.31x)   int8 + stem fp32 0.99974 (0.31x, +1.2 MB)
#                   int8 + Conv 0.99927 (0.26x, ConvInteger 1.8x slower)   int4 0.99084 (0.23x)   fp16 1.00000
#   embed_tokens    int8 0.99997   int4 0.99654   fp16 1.00000
#   encoder         int8 0.99978 (0.25x)   int4 0.99167 (0.16x)   int4 + int8 attention 0.99500 (0.20x)
#   decoder         int8 0.99939 (0.25x)   int4 0.95650 (0.17x)   int4 + int8 table 0.96326
#                   int4 + int8 attention 0.97922 (0.19x)   int4 + int8 attention + int8 table 0.98653 (0.22x)
#                   int4 block 64: 0.94727, block 128: 0.94272; accuracy_level 0 = 4 to 4 decimals
# and whole artifacts with python -m quantize.report (3 generated images x 3 tasks, 20 new tokens):
#   int4 everywhere in the language model: first-step top-1 0.33, greedy tokens identical 0.51
#   int4 with int8 attention projections:  first-step top-1 1.00, greedy tokens identical 0.80
# and best-of-5 times on 2 CPU cores (vision batch 2; encoder batch 2 x 586 tokens; decoder step 6 rows):
#   vision fp32 3.74 s, int8 2.14 s (under load; stem: see below)
#   encoder fp32 0.73 s, int8 0.21 s, int4 + int8 attention 0.36 s
#   decoder step fp32 17 ms, int8 8 ms, int4 + int8 attention 8 ms, int4 7 ms
# Hence at --int4: 4-bit weights for the decoder's feed-forward layers and the word embedding (the
# bytes read per token), attention projections int8; the encoder and the vision tower stay int8
# (compute-bound: MatMulNBits measured slower than MatMulInteger on the encoder, no faster on the
# vision tower, and less faithful on both).
# Convolutions stay fp32. The stem (patch embedding + stage 0) is int8 like the rest: kept fp32 it
# measured cosine 0.999626 against 0.999617 quantized (base, one 768x768 image) and cost ~100 ms of
# ~800 ms on a quiet machine (its 36864-token MatMuls are the widest of the tower; the earlier
# "no measurable time" was timed under load). Real checkpoints may weigh it differently: check
# yours with `python -m quantize.report`, and keep_fp32=("model.vision_tower.convs.0",
# "model.vision_tower.blocks.0") here restores the fp32 stem.
POLICY: dict[str, dict[str, GraphPolicy]] = {
    "fp16": {name: GraphPolicy("fp16") for name in ("vision_encoder", "embed_tokens", "encoder", "decoder")},
    "int8": {
        "vision_encoder": GraphPolicy("int8"),
        "embed_tokens": GraphPolicy("int8"),
        "encoder": GraphPolicy("int8"),
        "decoder": GraphPolicy("int8", blocks=True),
    },
    "int4": {
        "vision_encoder": GraphPolicy("int8"),
        "embed_tokens": GraphPolicy("int4"),
        "encoder": GraphPolicy("int8"),
        "decoder": GraphPolicy("int4", int8=_ATTENTION, blocks=True),
    },
}


def policy_for(precision: str, graph: str) -> GraphPolicy:
    return POLICY.get(precision, {}).get(graph, GraphPolicy(precision))


def node_scopes(node: onnx.NodeProto) -> list[str]:
    """The torch module names a node came from (torch.onnx's dynamo exporter records them)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return [s for s in ast.literal_eval(prop.value) if isinstance(s, str)]
            except (ValueError, SyntaxError):
                return []
    return []


def nodes_in_scopes(model: onnx.ModelProto, scopes: tuple[str, ...]) -> list[str]:
    """Names of the nodes that belong to any of `scopes` (fnmatch patterns: "decoder.layers.*.fc1")
    or to a submodule of one."""
    def inside(scope: str) -> bool:
        return any(fnmatch.fnmatchcase(scope, s) or fnmatch.fnmatchcase(scope, s + ".*") for s in scopes)

    return [n.name for n in model.graph.node if n.name and any(inside(s) for s in node_scopes(n))]


def quantize_onnx(source: Path, dest: Path, precision: str, graph: str, table_shape: tuple[int, int] | None = None,
                  policy: GraphPolicy | None = None, calibration: list[dict] | None = None) -> Path:
    """Write `source` (an fp32 graph) at `precision` to `dest`. `table_shape` is the word embedding's
    [V, d]: that table is quantized on purpose and stored in a shared file beside `dest`.
    `calibration` (feeds; int8 graphs only): calibrated int8 (quantize/onnx_calibrated.py) instead
    of dynamic."""
    from .onnx_calibrated import KEEP_FP32, calibrated_int8

    policy = policy or policy_for(precision, graph)
    if policy.precision != "int8":
        calibration = None
    if calibration is not None:
        policy = dataclasses.replace(policy, keep_fp32=policy.keep_fp32 + KEEP_FP32.get(graph, ()))
    model = onnx.load(str(source))
    keep = nodes_in_scopes(model, policy.keep_fp32)
    for scopes in (policy.keep_fp32, policy.int8):
        if scopes and not nodes_in_scopes(model, scopes):
            raise ValueError(f"{graph}: no node belongs to {', '.join(scopes)}; the policy is out of date")
    tables = tied.find_tables(model, table_shape) if table_shape else []
    shared: set[str] = set()  # initializers stored once, in files named by their content
    if policy.precision == "fp16":
        model = _fp16(model, keep)
        shared = {t.name for t in tables}
    elif policy.precision in ("int8", "int4"):
        # The learned position embeddings (1026 rows): per-row int8 at both precisions.
        for n, table in enumerate(tied.other_tables(model, {t.name for t in tables})):
            tied.rewrite_int8(model, table, prefix=f"positions{n}", columns=False)
        for n, table in enumerate(tables):
            shared |= _rewrite_table(model, table, policy.table or policy.precision, "embedding" + (str(n) if n else ""))
        if calibration is not None:
            model = calibrated_int8(model, keep, calibration)
        elif policy.precision == "int8":
            model = _int8_blocks(model, keep) if policy.blocks else _int8(model, keep, policy.conv)
        else:
            int8 = nodes_in_scopes(model, policy.int8)
            model = _int4(model, keep + int8)
            if int8 and policy.blocks:
                model = _int8_blocks(model, keep, only=int8)
            elif int8:
                model = _int8(model, keep, policy.conv, only=int8)
    elif policy.precision != "fp32":
        raise ValueError(f"no ONNX precision pass for {precision!r}; expected fp16, int8 or int4")
    tied.share_tables(model, dest.parent, shared)
    _describe(model, graph, policy, calibrated=None if calibration is None else len(calibration))
    onnx.save(model, str(dest))
    return dest


def _describe(model: onnx.ModelProto, graph: str, policy: GraphPolicy, calibrated: int | None = None) -> None:
    """Drop the exporter's per-node provenance (stack traces: ~1 MB per graph, needed only to select
    nodes by module, done by now) and record the pass in the graph's own metadata instead."""
    for node in model.graph.node:
        del node.metadata_props[:]
    record = {"graph": graph, **dataclasses.asdict(policy)}
    if policy.precision == "int4":
        record.update(block_size=INT4_BLOCK_SIZE, accuracy_level=INT4_ACCURACY_LEVEL)
    if policy.blocks and not calibrated:
        record.update(int8_block_size=INT8_BLOCK_SIZE, accuracy_level=INT4_ACCURACY_LEVEL)
    record["method"] = "calibrated" if calibrated else graph_method("onnx", policy.precision, graph)
    if calibrated:
        record["calibration_feeds"] = calibrated
    entries = {p.key: p.value for p in model.metadata_props}
    entries["florence2_edge.precision_pass"] = json.dumps(record)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, entries)


def _rewrite_table(model: onnx.ModelProto, uses, precision: str, prefix: str) -> set[str]:
    """The word embedding at `precision`; returns the initializer names to store once, shared."""
    if precision == "int8":
        tied.rewrite_int8(model, uses, prefix)
        return {f"{prefix}.int8"}
    if precision == "int4":
        tied.rewrite_int4(model, uses, INT4_BLOCK_SIZE, INT4_ACCURACY_LEVEL, prefix)
        return {f"{prefix}.int4{k}" for k in ("", ".scales", ".scales3", ".zero_points3")}
    raise ValueError(f"the word embedding of an int8/int4 graph is int8 or int4, not {precision!r}")


def _fp16(model: onnx.ModelProto, keep: list[str]) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, node_block_list=keep or None)


def _int8(model: onnx.ModelProto, keep: list[str], conv: bool, only: list[str] | None = None) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Named after this process, as export/owners.py names scratch folders: the next export sweeps it if killed.
    with tempfile.TemporaryDirectory(prefix=f"florence2-q-{os.getpid()}-") as scratch:
        out = Path(scratch) / "int8.onnx"
        # MatMulConstBOnly: attention's activation x activation MatMuls stay fp32 (quantizing both
        # sides per tensor at run time costs fidelity and buys nothing on CPU).
        with _quiet():
            quantize_dynamic(model, out, op_types_to_quantize=["MatMul", "Gemm"] + (["Conv"] if conv else []),
                             per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
                             nodes_to_quantize=only, nodes_to_exclude=keep, extra_options={"MatMulConstBOnly": True})
        return onnx.load(str(out))


def _int8_blocks(model: onnx.ModelProto, keep: list[str], only: list[str] | None = None) -> onnx.ModelProto:
    """Every MatMul with constant weights (or those in `only`) as 8-bit symmetric MatMulNBits; the
    activation x activation MatMuls of attention stay fp32, as with MatMulConstBOnly."""
    return _nbits(model, bits=8, block_size=INT8_BLOCK_SIZE, symmetric=True, exclude=keep, only=only)


def _int4(model: onnx.ModelProto, keep: list[str]) -> onnx.ModelProto:
    return _nbits(model, bits=4, block_size=INT4_BLOCK_SIZE, symmetric=False, exclude=keep)


def _nbits(model: onnx.ModelProto, bits: int, block_size: int, symmetric: bool, exclude: list[str],
           only: list[str] | None = None) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                     accuracy_level=INT4_ACCURACY_LEVEL, nodes_to_exclude=exclude,
                                     nodes_to_include=only, op_types_to_quantize=("MatMul",))
    with _quiet():
        quantizer.process()
    return quantizer.model.model
