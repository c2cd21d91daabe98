"""Calibrated int8 (`--int8 --calibration`), the manifest's quantization record, and OpenVINO --bf16,
on the 128 px checkpoint: the graphs really carry activation quantization, the artifacts load and
generate, the gate's fidelity is recorded; bad calibration inputs are one-line errors before any export."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.parity import fidelity_floor

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "export", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def one_line_error(result, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert fragment in lines[0], lines[0]


def test_bad_calibration_inputs_are_one_line_errors_before_the_export(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    out = str(tmp_path / "out")
    one_line_error(run_cli("--target", "onnx", "--calibration", "builtin", "--output", out), "add --int8")
    one_line_error(run_cli("--target", "onnx", "--int8", "--calibration", str(empty), "--output", out), "no image files")
    one_line_error(run_cli("--target", "openvino", "--int8", "--calibration", str(tmp_path / "nosuch"), "--output", out),
                   "no such folder")
    one_line_error(run_cli("--target", "coreml", "--int8", "--calibration", "builtin", "--output", out), "onnx or openvino")
    one_line_error(run_cli("--target", "onnx", "--int8", "--calibration-count", "3", "--output", out), "add --calibration")
    one_line_error(run_cli("--target", "onnx", "--bf16", "--output", out), "--target openvino --bf16")
    assert not Path(out).exists()


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    from runtime.probes import sample_image

    folder = tmp_path_factory.mktemp("calibration")
    for seed in range(3):
        sample_image(500 + seed, (200 + 40 * seed, 160)).save(folder / f"{seed}.png")
    return folder


def _generates(artifact) -> list[int]:
    from runtime import Florence2
    from runtime.probes import sample_image

    ids = Florence2.load(artifact).generate(sample_image(7), "<CAPTION>", max_new_tokens=4, min_new_tokens=4)
    assert len(ids) == 5
    return ids


def _assert_fidelity_recorded(manifest, precision: str = "int8") -> None:
    for name, graph in manifest.graphs.items():
        floor = fidelity_floor(precision, name)
        assert graph.parity["fidelity_floor"] == floor and graph.parity["min_cosine"] >= floor, (name, graph.parity)


def test_calibrated_onnx_puts_qdq_around_conv_and_matmul(exported, variant_checkpoint, calibration_dir):
    import onnx

    from runtime.manifest import read_manifest

    artifact = exported(variant_checkpoint("px128"), "onnx", precision="int8", calibration=str(calibration_dir),
                        calibration_count=2)
    manifest = read_manifest(artifact)
    q = manifest.quantization
    assert (q.method, q.calibration, q.count) == ("calibrated", "dir", 2)
    assert q.graphs == {"vision_encoder": "calibrated", "embed_tokens": "weight-only", "encoder": "calibrated",
                        "decoder": "dynamic"}
    graph = onnx.load(str(artifact / "vision_encoder.onnx"))
    produced_by = {out: node for node in graph.graph.node for out in node.output}
    fed = {node.op_type for node in graph.graph.node if node.op_type in ("Conv", "MatMul")
           and produced_by.get(node.input[0]) is not None and produced_by[node.input[0]].op_type == "DequantizeLinear"}
    assert fed == {"Conv", "MatMul"}  # activation inputs dequantized from int8: quantized with calibrated ranges
    assert any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    assert not any(n.op_type == "DynamicQuantizeLinear" for n in graph.graph.node)
    decoder = onnx.load(str(artifact / "decoder.onnx"), load_external_data=False)
    assert any(n.op_type == "DynamicQuantizeLinear" for n in decoder.graph.node)  # the decoder stays dynamic
    _assert_fidelity_recorded(manifest)
    _generates(artifact)


def test_calibrated_openvino_has_fake_quantize(exported, variant_checkpoint):
    from runtime.manifest import read_manifest

    artifact = exported(variant_checkpoint("px128"), "openvino", precision="int8", calibration="builtin",
                        calibration_count=2)
    manifest = read_manifest(artifact)
    q = manifest.quantization
    assert (q.method, q.calibration, q.count) == ("calibrated", "builtin", 2)
    assert q.graphs == {"vision_encoder": "calibrated", "embed_tokens": "weight-only", "encoder": "weight-only",
                        "decoder": "weight-only"}
    assert 'type="FakeQuantize"' in (artifact / "vision_encoder.xml").read_text()
    for name in ("encoder", "decoder"):
        assert 'type="FakeQuantize"' not in (artifact / f"{name}.xml").read_text()
    _assert_fidelity_recorded(manifest)
    _generates(artifact)


def test_dynamic_int8_records_its_method(exported, variant_checkpoint):
    from runtime.manifest import read_manifest

    q = read_manifest(exported(variant_checkpoint("px128"), "openvino", precision="int8")).quantization
    assert (q.method, q.calibration, q.count) == ("weight-only", None, None)


def test_bf16_openvino_export_loads_and_generates(exported, variant_checkpoint):
    from runtime.manifest import read_manifest

    artifact = exported(variant_checkpoint("px128"), "openvino", precision="bf16")
    manifest = read_manifest(artifact)
    assert manifest.precision == "bf16" and manifest.quantization is None
    _assert_fidelity_recorded(manifest, "bf16")
    _generates(artifact)


def test_manifest_without_quantization_still_loads_and_a_bad_one_is_named(exported, variant_checkpoint, tmp_path):
    from runtime.errors import ArtifactError
    from runtime.manifest import MANIFEST_NAME, read_manifest, seal

    source = exported(variant_checkpoint("px128"), "openvino", precision="int8", calibration="builtin",
                      calibration_count=2)
    old = Path(shutil.copytree(source, tmp_path / "old"))
    data = json.loads((old / MANIFEST_NAME).read_text())
    del data["quantization"]  # as a manifest written before the field existed
    (old / MANIFEST_NAME).write_text(json.dumps(data))
    seal(old)
    assert read_manifest(old).quantization is None

    data["quantization"] = {"method": "static", "graphs": {}}
    (old / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="quantization.method"):
        seal(old)


def test_calibration_feeds_follow_the_checkpoint_image_size(variant_checkpoint):
    from export.calibration import calibration_feeds
    from export.calibration_options import check_calibration
    from export.artifact import build_manifest, source_record
    from export.facts import read_contract
    from export.loading import load_checkpoint

    checkpoint = load_checkpoint(str(variant_checkpoint("px128")))
    contract = read_contract(checkpoint)
    manifest = build_manifest(checkpoint, contract, "onnx", "int8", source_record(checkpoint))
    feeds = calibration_feeds(check_calibration("builtin", 2, "onnx", "int8"), checkpoint.model, contract, manifest,
                              checkpoint.processor.tokenizer)
    assert [f["pixel_values"].shape for f in feeds["vision_encoder"]] == [(1, 3, 128, 128)] * 2
    for f in feeds["encoder"]:
        assert f["inputs_embeds"].shape[1] == f["attention_mask"].shape[1] > contract.dims.image_tokens
        assert np.isfinite(f["inputs_embeds"]).all()
