"""The contract is enough: examples/mobile_port.py, a second implementation of the loop written from
the manifest alone (onnxruntime, numpy; Pillow only decodes PNGs), reproduces the conformance vectors, greedy and beam
search, with florence2-edge and every tokenizer library unimportable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PORT = REPO / "examples" / "mobile_port.py"

# Everything of ours, and every library that would do part of the work for the port.
BLOCKER = """
import sys, importlib.abc, runpy
BLOCKED = {"runtime", "export", "quantize", "platforms", "tokenizers", "transformers", "torch"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked import: {name}")
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_port(folder: Path, *args: str, cwd: Path):
    # cwd outside the repository: `runtime` is not importable from the working directory either.
    return subprocess.run([sys.executable, "-c", BLOCKER, str(PORT), str(folder), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def artifacts(variant_checkpoint, exported):
    checkpoint = variant_checkpoint("px128")
    return {"int8": exported(checkpoint, "onnx", precision="int8", mobile=True),
            "static": exported(checkpoint, "onnx", mobile=True, static=True, prompt_bucket=32, max_decode=20)}


@pytest.mark.parametrize("which", ["int8", "static"])
def test_port_reproduces_the_vectors_from_the_manifest_alone(artifacts, which, tmp_path):
    folder = artifacts[which]
    fields = tmp_path / "fields.json"
    result = run_port(folder, "--fields", str(fields), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "mobile_port: 30 passed, 0 failed", result.stdout
    checked = {line.split()[2] for line in lines[:-1]}
    assert {"resize", "pixel_values", "first_step", "greedy.ids", "greedy.text", "beam.ids", "beam.answer"} <= checked
    read = json.loads(fields.read_text())
    # What it had to read: nothing outside the manifest's mobile record, graphs and stated facts.
    assert {"mobile.token_bytes", "conformance", "tokens.decoder_start", "dims.tokenizer_size",
            "preprocessing.resample", "tasks.<OD>.prompt_ids", "graphs.decoder.variants.ort.file"} <= set(read)
    assert {field.split(".")[0] for field in read} <= {"conformance", "dims", "generation", "graphs", "mobile",
                                                       "preprocessing", "static", "tasks", "tokens"}
    assert ("static.beams" in read) == (which == "static")
    print(f"\n{which}: the port read {len(read)} manifest fields: {', '.join(read)}")


def test_port_refuses_a_dataflow_it_does_not_implement(artifacts, tmp_path):
    copy = Path(shutil.copytree(artifacts["int8"], tmp_path / "artifact"))
    data = json.loads((copy / "manifest.json").read_text())
    data["mobile"]["dataflow"]["encoder.inputs_embeds"] = "concat(embed_tokens.inputs_embeds, vision_encoder.image_features)"
    (copy / "manifest.json").write_text(json.dumps(data))
    result = run_port(copy, cwd=tmp_path)
    assert result.returncode == 1 and "this port implements" in result.stderr and "encoder.inputs_embeds" in result.stderr
