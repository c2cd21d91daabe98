"""The README's first command: `python -m export --target onnx` exports the shipped checkpoint trained
on synthetic scenes (embedded:tiny), and that artifact answers held-out scenes: the right boxes and
text from the runtime CLI, and the same token ids as transformers' generate() on the same weights.

Scores are checked against the floors stored next to the weights (weights/floors.json), which sit
well under the figures of the README's accuracy table: font rendering moves by a pixel between
Pillow versions, so exact answers are not pinned."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from export.embedded import TRAINED_WEIGHTS
from export.synthetic import score

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (TRAINED_WEIGHTS / "model.safetensors").is_file(),
                                reason="no shipped weights in export/synthetic/weights")


@pytest.fixture(scope="module")
def readme_export(tmp_path_factory):
    """What the README's first command does, end to end, in a fresh process."""
    output = tmp_path_factory.mktemp("trained") / "embedded"
    result = subprocess.run([sys.executable, "-m", "export", "--target", "onnx", "--output", str(output)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    return output, result


@pytest.fixture(scope="module")
def floors():
    return json.loads((TRAINED_WEIGHTS / "floors.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def scenes():
    return score.held_out(12, size=score._image_size(TRAINED_WEIGHTS))


def test_readme_command_exports_the_trained_default(readme_export):
    output, result = readme_export
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "trained on synthetic scenes" in result.stderr
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["source"]["model"] == "embedded:tiny"
    side = json.loads((TRAINED_WEIGHTS / "processor_config.json").read_text())["image_processor"]["size"]["height"]
    assert manifest["preprocessing"]["size"]["height"] == side  # the checkpoint's size, not a preset's
    for step in ("vision_encoder", "embed_tokens", "encoder", "decoder"):
        assert step in result.stderr and (output / f"{step}.onnx").is_file()
    assert "max abs diff" in result.stderr


def test_the_cli_prints_correct_boxes(readme_export, floors, tmp_path):
    """The README's CLI example on scenes written by `python -m export.synthetic.write`: the <OD> boxes
    scored against the truth that command writes next to the pictures. (<OCR> is not checked: the
    shipped weights do not read text yet; the README's accuracy table says so.)"""
    output, _ = readme_export
    scenes_dir = tmp_path / "scenes"
    subprocess.run([sys.executable, "-m", "export.synthetic.write", "--out", str(scenes_dir), "--count", "12"],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    truth = {r["file"]: r for r in map(json.loads, (scenes_dir / "truth.jsonl").read_text().splitlines())}
    proc = subprocess.run([sys.executable, "-m", "runtime", "--model", str(output), str(scenes_dir), "--task", "<OD>",
                           "-q"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    found = {Path(r["image"]).name: r["result"] for r in map(json.loads, proc.stdout.splitlines())}
    assert set(found) == set(truth)
    hits = predicted = wanted = 0
    for name, record in truth.items():
        boxes = [(s["kind"], s["box"]) for s in record["shapes"]]
        hits += score.match_boxes(list(zip(found[name]["labels"], found[name]["bboxes"])), boxes)
        predicted, wanted = predicted + len(found[name]["labels"]), wanted + len(boxes)
    f1 = 2 * hits / (predicted + wanted)
    assert f1 >= floors["od_f1"], (f1, found)


def test_the_trained_artifact_generates_the_tokens_of_transformers(readme_export, scenes):
    import torch
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    from runtime import Florence2

    output, _ = readme_export
    model = Florence2.load(output)
    hf = Florence2ForConditionalGeneration.from_pretrained(TRAINED_WEIGHTS).eval()
    processor = AutoProcessor.from_pretrained(TRAINED_WEIGHTS)
    for scene in scenes[:4]:
        for example in scene.examples():
            prompt = example.task + (example.text or "")
            inputs = processor(text=[prompt], images=[scene.image], return_tensors="pt")
            for options in (dict(num_beams=1), dict(num_beams=3)):
                with torch.no_grad():
                    want = hf.generate(**inputs, **options).tolist()[0]
                assert model.generate(scene.image, example.task, example.text, **options) == want, (scene.index, prompt)


def test_shipped_weights_answer_held_out_scenes(floors, scenes):
    """transformers itself on the shipped checkpoint, every task, greedy, over held-out scenes."""
    run = score.transformers_runner(TRAINED_WEIGHTS, num_beams=1)
    scores = score.evaluate(run, scenes).scores()
    low = {key: (round(scores[key], 3), floor) for key, floor in floors.items() if scores[key] < floor}
    assert not low, f"held-out scores under their floors (score, floor): {low}"
