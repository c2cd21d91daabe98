"""The runtime stays dependency-light, and refuses bad artifacts and tasks with one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import ArtifactError, Florence2, TaskError

REPO = Path(__file__).resolve().parents[1]

BLOCKER = """
import sys, importlib.abc
HEAVY = {"torch", "transformers", "onnx", "onnxscript", "coremltools", "nncf", "optimum", "export", "quantize"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"blocked heavy import: {name}")
sys.meta_path.insert(0, Block())
"""


def test_runtime_runs_with_torch_and_transformers_unimportable(onnx_artifact, images, tmp_path):
    image_path = tmp_path / "image.png"
    images[0].save(image_path)
    script = BLOCKER + f"""
from runtime import Florence2
model = Florence2.load({str(onnx_artifact)!r})
print(model.generate({str(image_path)!r}, "<OD>", max_new_tokens=8))
print(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    ids_line, modules_line = result.stdout.strip().splitlines()
    ids = json.loads(ids_line)
    assert ids[0] == 2 and len(ids) > 2
    assert modules_line == "[]"
    assert ids == Florence2.load(onnx_artifact).generate(images[0], "<OD>", max_new_tokens=8)


@pytest.fixture()
def artifact_copy(onnx_artifact, tmp_path):
    return Path(shutil.copytree(onnx_artifact, tmp_path / "artifact"))


def test_missing_graph_file(artifact_copy):
    (artifact_copy / "decoder.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing decoder.onnx"):
        Florence2.load(artifact_copy)


def test_damaged_graph_file(artifact_copy):
    with open(artifact_copy / "encoder.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match="sha256"):
        Florence2.load(artifact_copy)


def test_newer_format_version(artifact_copy):
    path = artifact_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="upgrade florence2-edge"):
        Florence2.load(artifact_copy)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="manifest.json"):
        Florence2.load(tmp_path)


def test_task_errors(onnx_artifact, images):
    model = Florence2.load(onnx_artifact)
    with pytest.raises(TaskError, match="<OCR_WITH_REGION>"):
        model(images[0], "<OCR_WITH_REGIONS>")
    with pytest.raises(TaskError, match="takes no text"):
        model(images[0], "<OD>", "a dog")
    for error in (TaskError("x"), ArtifactError("y")):
        assert "\n" not in str(error)
