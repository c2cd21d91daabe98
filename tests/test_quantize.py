"""Quantized ONNX artifacts (--fp16, --int8, --int4) of the tiny checkpoint: they load, generate, pass
their fidelity floors, are as small as they should be, store the word embedding once, and a broken
precision pass is refused. The fidelity report (python -m quantize.report) on them and on itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.parity import FIDELITY_FLOORS, fidelity_floor
from export.targets import PRECISIONS, TARGETS
from runtime import Florence2
from runtime.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]
QUANTIZED = ("fp16", "int8", "int4")
LANGUAGE = ("embed_tokens", "encoder", "decoder")


@pytest.fixture(scope="module")
def artifacts(tiny_checkpoint, onnx_artifact, tmp_path_factory):
    """Each precision exported once for the module, on first use."""
    from export.pipeline import run_export

    built = {"fp32": onnx_artifact}

    def get(precision: str) -> Path:
        if precision not in built:
            output = tmp_path_factory.mktemp("quantized") / f"tiny-{precision}"
            run_export(str(tiny_checkpoint), "onnx", output, precision=precision)
            built[precision] = output
        return built[precision]

    return get


def weight_bytes(folder: Path, name: str) -> int:
    """The bytes of a graph's initializers, shared tables included (file sizes would also count the
    fp32 export's per-node provenance metadata, which the precision passes drop)."""
    model = onnx.load(str(folder / f"{name}.onnx"))
    return sum(onnx.numpy_helper.to_array(init).nbytes for init in model.graph.initializer)


def total_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".bin"))


@pytest.mark.parametrize("precision", QUANTIZED)
def test_flag_writes_an_artifact_that_loads_and_generates(artifacts, images, precision):
    folder = artifacts(precision)
    manifest = read_manifest(folder)  # every file, shared ones included, matches its sha256
    assert manifest.precision == precision
    for name, graph in manifest.graphs.items():
        parity = graph.parity
        assert parity["fidelity_floor"] == fidelity_floor(precision, name)
        assert parity["passed"] and parity["min_cosine"] >= parity["fidelity_floor"]
        assert set(parity["cosine"]) == set(graph.outputs)
    model = Florence2.load(folder)
    ids = model.generate(images[0], "<CAPTION>", max_new_tokens=8, num_beams=3)
    assert ids[0] == manifest.tokens.decoder_start and 2 <= len(ids) <= 9
    assert all(0 <= i < manifest.dims.vocab_size for i in ids)
    assert isinstance(model(images[1], "<OD>", max_new_tokens=8), dict)


def test_fp16_keeps_fp32_inputs_and_outputs_and_halves_the_weights(artifacts):
    fp32, fp16 = artifacts("fp32"), artifacts("fp16")
    model = onnx.load(str(fp16 / "decoder.onnx"), load_external_data=False)
    float_io = [v for v in [*model.graph.input, *model.graph.output] if v.type.tensor_type.elem_type != onnx.TensorProto.INT64]
    assert float_io and all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in float_io)
    for name in ("vision_encoder", *LANGUAGE):
        assert 0.45 < weight_bytes(fp16, name) / weight_bytes(fp32, name) < 0.55, name
    assert total_bytes(fp16) < 0.5 * total_bytes(fp32)  # and the word embedding is stored once


def test_int8_and_int4_sizes(artifacts):
    fp32, int8, int4 = artifacts("fp32"), artifacts("int8"), artifacts("int4")
    # The language graphs are MatMul and embedding weights: int8 is ~0.25x plus scales. (The tiny
    # vision tower is mostly convolutions, which the policy leaves in fp32.)
    for name in LANGUAGE:
        assert weight_bytes(int8, name) < 0.4 * weight_bytes(fp32, name), name
    assert weight_bytes(int8, "vision_encoder") < 0.75 * weight_bytes(fp32, "vision_encoder")
    for name in ("embed_tokens", "decoder"):  # 4-bit table and feed-forward weights (attention stays int8)
        assert weight_bytes(int4, name) < 0.9 * weight_bytes(int8, name), name
    assert total_bytes(int4) < total_bytes(int8) < 0.4 * total_bytes(fp32)


def test_int8_decoder_layers_are_8_bit_blocks_and_the_pass_says_so(artifacts):
    """The decoder's layer weights are 8-bit MatMulNBits (matrix-vector kernels for a decode step);
    the encoder keeps MatMulInteger, and the int4 decoder's attention projections get the same blocks."""
    from quantize.onnx import INT8_BLOCK_SIZE

    def ops(folder: Path, name: str) -> list[onnx.NodeProto]:
        return list(onnx.load(str(folder / f"{name}.onnx"), load_external_data=False).graph.node)

    int8, int4 = artifacts("int8"), artifacts("int4")
    blocks = [n for n in ops(int8, "decoder") if n.op_type == "MatMulNBits"]
    layers = read_manifest(int8).dims.decoder_layers
    # Per layer: self-attention q, k, v, out; cross-attention q, out (its k, v are the encoder graph's); fc1, fc2.
    assert len(blocks) == 8 * layers
    for node in blocks:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (8, INT8_BLOCK_SIZE, 4)
    weight_matmuls = [n for n in ops(int8, "decoder") if n.op_type == "MatMulInteger"]
    assert len(weight_matmuls) == 1  # the tied LM head, on the shared table
    assert not [n for n in ops(int8, "encoder") if n.op_type == "MatMulNBits"]
    assert [n for n in ops(int8, "encoder") if n.op_type == "MatMulInteger"]
    by_bits = {}
    for node in ops(int4, "decoder"):
        if node.op_type == "MatMulNBits":
            bits = next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "bits")
            by_bits[bits] = by_bits.get(bits, 0) + 1
    assert by_bits.get(8) == 6 * layers and by_bits.get(4, 0) >= 2 * layers
    model = onnx.load(str(int8 / "decoder.onnx"), load_external_data=False)
    record = json.loads({p.key: p.value for p in model.metadata_props}["florence2_edge.precision_pass"])
    assert record["blocks"] is True and record["int8_block_size"] == INT8_BLOCK_SIZE
    assert record["method"] == "dynamic"


@pytest.mark.parametrize("precision", ["int8", "int4", "fp16"])
def test_word_embedding_is_stored_once(artifacts, precision):
    """embed_tokens and decoder reference the same shared file; no fp32 [V, d] table is left."""
    folder = artifacts(precision)
    manifest = read_manifest(folder)
    table = [manifest.dims.vocab_size, manifest.dims.d_model]
    referenced = {}
    for name in ("embed_tokens", "decoder"):
        model = onnx.load(str(folder / f"{name}.onnx"), load_external_data=False)
        assert not [i.name for i in model.graph.initializer
                    if list(i.dims) == table and i.data_type == onnx.TensorProto.FLOAT], name
        referenced[name] = {e.value for i in model.graph.initializer for e in i.external_data if e.key == "location"}
    assert referenced["embed_tokens"] and referenced["embed_tokens"] <= referenced["decoder"]
    assert all(f in manifest.files for f in referenced["decoder"])


def test_broken_quantization_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    """A precision pass that zeroes the word embedding fails the fidelity gate: nothing is written."""
    import quantize.tied
    from export.errors import ParityError
    from export.pipeline import run_export

    real = quantize.tied.int8_table
    monkeypatch.setattr(quantize.tied, "int8_table", lambda weight: tuple(np.zeros_like(a) for a in real(weight)))
    output = tmp_path / "broken"
    with pytest.raises(ParityError, match=r"decoder\.logits: cosine .* < floor"):
        run_export(str(tiny_checkpoint), "onnx", output, precision="int8")
    assert not output.exists()
    assert not list(tmp_path.iterdir())  # no staging folder left either


def test_floors_are_set_for_every_reduced_precision():
    assert set(FIDELITY_FLOORS) == set(PRECISIONS) - {"fp32"}
    for precision in FIDELITY_FLOORS:
        for graph in ("vision_encoder", *LANGUAGE, "some_other_graph"):
            assert 0.5 < fidelity_floor(precision, graph) < 1.0
    assert fidelity_floor("fp32", "decoder") is None


# ------------------------------------------------------------------------------------ refusals


def _export_cli(*args):
    return subprocess.run([sys.executable, "-m", "export", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("target,precision",
                         [(t.name, p) for t in TARGETS.values() for p in PRECISIONS if p not in t.precisions])
def test_refused_combinations_say_why(tmp_path, target, precision):
    result = _export_cli("--target", target, f"--{precision}", "--output", str(tmp_path / "o"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--{precision} is not available for --target {target}" in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_refused_precision_names_the_reason(monkeypatch, capsys, tmp_path):
    """The table drives refusals: a target row that cannot write int4 says so, in one line."""
    from export import cli
    from export.targets import Target

    row = Target("fakeaccel", ".bin", lambda *a, **k: None, ("fp32", "int8"), (), "a test target",
                 refused={"int4": "fakeaccel has no 4-bit kernels"})
    monkeypatch.setitem(TARGETS, "fakeaccel", row)
    assert cli.main(["--target", "fakeaccel", "--int4", "--output", str(tmp_path / "o")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["export: error: --int4 is not available for --target fakeaccel: fakeaccel has no 4-bit kernels"]


def test_two_precision_flags_are_refused(tmp_path):
    result = _export_cli("--target", "onnx", "--int8", "--int4", "--output", str(tmp_path / "o"))
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


# -------------------------------------------------------------------------------------- report


def _report(*args) -> tuple[int, dict | None]:
    from quantize.report import main

    return main([*args, "--tasks", "<CAPTION>", "<OD>", "--max-new-tokens", "6", "--repeats", "1"])


def test_report_of_an_artifact_against_itself_is_perfect(artifacts, tmp_path):
    fp32 = artifacts("fp32")
    out = tmp_path / "self.json"
    assert _report("--reference", str(fp32), "--candidate", str(fp32), "--json", str(out)) == 0
    report = json.loads(out.read_text())
    for graph in report["graphs"].values():
        for inputs in ("generated", "images"):
            assert graph[inputs]["min_cosine"] == pytest.approx(1.0, abs=1e-9)
            assert graph[inputs]["max_abs_error"] == 0.0
    assert report["first_step_top1"] == 1.0 and report["size_ratio"] == 1.0
    for mode in ("greedy", "beams3"):
        assert report["tokens"][mode]["token_agreement"] == 1.0
        assert report["tokens"][mode]["sequence_agreement"] == 1.0


def test_report_json_keys_and_ranges(artifacts, tmp_path, capsys):
    out = tmp_path / "int8.json"
    assert _report("--reference", str(artifacts("fp32")), "--candidate", str(artifacts("int8")), "--json", str(out)) == 0
    table = capsys.readouterr().out
    assert "first-step top-1 agreement" in table and "decoder" in table
    report = json.loads(out.read_text())
    assert set(report) >= {"reference", "candidate", "graphs", "first_step_top1", "tokens", "size_ratio", "speed"}
    assert report["candidate"]["precision"] == "int8" and report["reference"]["precision"] == "fp32"
    assert set(report["graphs"]) == {"vision_encoder", *LANGUAGE}
    for graph in report["graphs"].values():
        for inputs in ("generated", "images"):
            assert 0.9 < graph[inputs]["min_cosine"] <= 1.0 + 1e-9 and graph[inputs]["max_abs_error"] >= 0
    assert 0 <= report["first_step_top1"] <= 1
    for mode in ("greedy", "beams3"):
        assert 0 <= report["tokens"][mode]["token_agreement"] <= 1
        assert 0 <= report["tokens"][mode]["sequence_agreement"] <= 1
    assert 0.2 < report["size_ratio"] < 0.8
    assert report["speed"]["ratio"] > 0 and report["speed"]["reference_s"] > 0


def _report_cli(*args):
    return subprocess.run([sys.executable, "-m", "quantize.report", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def _one_line(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_report_refuses_a_folder_that_is_not_an_artifact(artifacts, tmp_path):
    _one_line(_report_cli("--reference", str(artifacts("fp32")), "--candidate", str(tmp_path)),
              "--candidate", "not a florence2-edge artifact")
    _one_line(_report_cli("--reference", str(tmp_path / "missing"), "--candidate", str(artifacts("fp32"))),
              "--reference", "not found")


@pytest.mark.parametrize("field,value,message", [
    ("source", {"model": "someone/else"}, "different checkpoints"),
    ("dims", {"d_model": 1}, "was changed after export"),  # an unsealed edit is refused at load
])
def test_report_refuses_mismatched_artifacts(artifacts, tmp_path, field, value, message):
    from runtime.manifest import seal

    other = tmp_path / "other"
    shutil.copytree(artifacts("fp32"), other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest[field].update(value)
    (other / "manifest.json").write_text(json.dumps(manifest))
    if field == "source":
        seal(other)  # a deliberate edit, re-sealed: the report itself must see the different checkpoint
    _one_line(_report_cli("--reference", str(artifacts("fp32")), "--candidate", str(other)), message)
