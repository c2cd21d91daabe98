"""`python -m export`: user errors are one line with exit code 2, and nothing half-written is left."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_export(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "export", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_target_suggests_the_closest(tmp_path):
    assert_one_line_error(run_export("--target", "onx", "--output", str(tmp_path / "o")), "unknown target 'onx'", "did you mean 'onnx'")


def test_unknown_option_is_one_line(tmp_path):
    assert_one_line_error(run_export("--target", "onnx", "--overwite"), "unknown option --overwite", "--overwrite")


def test_missing_target_is_one_line():
    assert_one_line_error(run_export(), "--target")


def test_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(run_export("--model", str(tmp_path), "--target", "onnx", "--output", str(tmp_path / "o")),
                          "not a Florence-2 checkpoint", "config.json")


def test_other_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bart"}))
    assert_one_line_error(run_export("--model", str(tmp_path), "--target", "onnx", "--output", str(tmp_path / "o")),
                          "model_type 'bart'", "florence2")


def test_missing_weights_file(tiny_checkpoint, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    (checkpoint / "model.safetensors").unlink()
    result = run_export("--model", str(checkpoint), "--target", "onnx", "--output", str(tmp_path / "o"))
    assert_one_line_error(result, "no weights file", "model.safetensors")
    assert not (tmp_path / "o").exists()


def test_missing_path(tmp_path):
    assert_one_line_error(run_export("--model", str(tmp_path / "nope"), "--target", "onnx"), "not a folder")


def test_non_empty_output_is_refused_without_overwrite(tmp_path):
    output = tmp_path / "artifact"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    assert_one_line_error(run_export("--target", "onnx", "--output", str(output)), "not empty", "--overwrite")
    assert (output / "keep.txt").read_text() == "mine"


def test_bad_opset_is_refused(tmp_path):
    assert_one_line_error(run_export("--target", "onnx", "--opset", "9", "--output", str(tmp_path / "o")), "--opset 9")


def test_failed_export_leaves_nothing_behind(tiny_checkpoint, tmp_path, monkeypatch):
    """Interrupt after two graphs: no destination folder, no staging folder, no stray files."""
    from export import pipeline
    from export.targets import TARGETS, Target

    calls = []
    real = TARGETS["onnx"]

    def failing_writer(spec, model, example, path, **options):
        calls.append(spec.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real.writer(spec, model, example, path, **options)

    monkeypatch.setitem(TARGETS, "onnx", Target("onnx", ".onnx", failing_writer, ("fp32",), ("opset",), "test"))
    output = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_export(str(tiny_checkpoint), "onnx", output)
    assert calls == ["vision_encoder", "embed_tokens", "encoder"]
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_previous_artifact(onnx_artifact, tiny_checkpoint, tmp_path, monkeypatch):
    from export import pipeline
    from export.errors import ParityError
    from export.parity import GraphParity

    output = tmp_path / "artifact"
    shutil.copytree(onnx_artifact, output)
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    monkeypatch.setattr(pipeline, "check_graph", lambda spec, *a, **k: GraphParity(spec.name, 1e-4, {"x": 1.0}, 1))
    with pytest.raises(ParityError):
        pipeline.run_export(str(tiny_checkpoint), "onnx", output, overwrite=True)
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]
