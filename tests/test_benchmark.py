"""examples/benchmark.py as a user runs it: a subprocess on the tiny checkpoint, JSON checked for
structure and sane values (never for speed: timings on a shared machine are not assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("vision_ms", "encoder_ms", "decode_ms_per_token", "e2e_ms", "peak_rss_mb", "size_mb")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Shared by the tests here, so the tiny checkpoint is built and exported once."""
    return tmp_path_factory.mktemp("bench-cache")


def test_benchmark_tiny_onnx(tmp_path, cache):
    out = tmp_path / "bench.json"
    command = [sys.executable, str(REPO / "examples" / "benchmark.py"), "--size", "random-tiny", "--targets", "onnx",
               "--precisions", "fp32", "--tokens", "4", "--beams", "1,3", "--repeats", "1",
               "--cache", str(cache), "--json", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x e2e" in result.stdout  # the table was printed

    data = json.loads(out.read_text())
    reference = data["reference"]
    assert reference["size_mb"] > 0 and reference["peak_rss_mb"] > 0
    assert sorted((r["tokens"], r["beams"]) for r in reference["runs"]) == [(4, 1), (4, 3)]
    for run in reference["runs"]:
        assert all(run[key] > 0 for key in STAGES if key != "size_mb")

    runs = [r for r in data["runs"] if r["target"] != "transformers"]
    assert sorted((r["target"], r["precision"], r["tokens"], r["beams"]) for r in runs) == [
        ("onnx", "fp32", 4, 1), ("onnx", "fp32", 4, 3)]
    for run in runs:
        assert all(run[key] > 0 for key in STAGES)
        assert run["speedup_e2e"] > 0 and run["speedup_decode"] > 0
        assert run["ids_match"] is True  # fp32 decodes exactly what transformers does

    # The transformers peers, in the same run, each row with its ratios (bench_peers.py).
    peers = [r for r in data["runs"] if r["target"] == "transformers"]
    assert sorted((r["precision"], r["beams"]) for r in peers) == [
        (peer, beams) for peer in ("bf16-autocast", "eager", "int8-dynamic") for beams in (1, 3)]
    for row in peers + runs:
        for key in ("speedup_e2e", "speedup_best", "x_floor", "floor_ms"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["precision"], key, row[key])
    # x best: the fastest transformers row of the same beams (the default fp32 or a peer) over this row.
    # Which one is fastest is the machine's business (on tiny widths the default often wins).
    for beams in (1, 3):
        group = [r for r in peers + runs if r["beams"] == beams]
        fastest = min([r["e2e_ms"] for r in reference["runs"] if r["beams"] == beams]
                      + [r["e2e_ms"] for r in group if r["target"] == "transformers"])
        for row in group:
            assert row["speedup_best"] == round(fastest / row["e2e_ms"], 3), (row["precision"], beams)

    # The limits (bench_limits.py): bandwidth, and the cold start of python -m runtime.
    limits = data["limits"]
    assert limits["gemv"]["gb_per_s"] > 0 and limits["gemv"]["bytes"] > 0
    assert [s["target"] for s in limits["cold_starts"]] == ["onnx"] and limits["cold_starts"][0]["cold_start_s"] > 0
    assert "GEMV bandwidth" in result.stdout and "cold start onnx fp32" in result.stdout


def test_benchmark_skips_unavailable_candidates_and_reuses_the_cache(cache):
    """A precision or target not available is a printed skip, not a crash; a cached artifact is reused."""
    base = [sys.executable, str(REPO / "examples" / "benchmark.py"), "--size", "random-tiny", "--targets", "onnx,nosuch",
            "--tokens", "2", "--beams", "1", "--repeats", "1", "--cache", str(cache), "--peers", "default,nosuch",
            "--skip-limits"]
    first = subprocess.run(base + ["--precisions", "fp32,int3"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "skip onnx int3" in first.stdout and "skip nosuch fp32" in first.stdout
    assert "skip transformers nosuch" in first.stdout and "GEMV" not in first.stdout
    second = subprocess.run(base + ["--precisions", "fp32"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "exporting" not in second.stdout


def test_profile_times_the_stages_of_calls_inside_the_block(onnx_artifact, images):
    from runtime import Florence2

    model = Florence2.load(onnx_artifact)
    with model.profile() as stages:
        ids = model.generate(images[0], "<OD>", num_beams=3, max_new_tokens=4)
    assert set(stages) == {"preprocess", "vision", "encoder", "decode"}
    assert all(seconds > 0 for seconds in stages.values())
    assert getattr(model._profiling, "stages", None) is None  # off again: later calls record nothing
    assert model.generate(images[0], "<OD>", num_beams=3, max_new_tokens=4) == ids


def test_gelu_reassociation_is_exact_and_fusable(tmp_path):
    """The rewrite onnx_writer applies: same bits unfused, and onnxruntime fuses the result."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from export.onnx_rewrites import reassociate_gelu

    consts = {"sqrt2": np.sqrt(2.0), "one": 1.0, "half": 0.5}
    inits = [numpy_helper.from_array(np.array(v, dtype=np.float32), k) for k, v in consts.items()]
    inits.append(numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 16), dtype=np.float32), "w"))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Div", ["h", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["half", "a"], ["m"]),
             helper.make_node("Mul", ["h", "m"], ["y"], name="gelu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    original = model.SerializeToString()
    assert reassociate_gelu(model) == 1
    assert reassociate_gelu(model) == 0  # already in the fusable order

    x = {"x": np.random.default_rng(1).standard_normal((4, 8), dtype=np.float32) * 4}
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    before = ort.InferenceSession(original, plain).run(None, x)[0]
    after = ort.InferenceSession(model.SerializeToString(), plain).run(None, x)[0]
    np.testing.assert_array_equal(before, after)

    optimized = ort.SessionOptions()
    optimized.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), optimized)
    ops = {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "Erf" not in ops and ops & {"Gelu", "BiasGelu"}
