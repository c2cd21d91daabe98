"""`python -m runtime` run as a user runs it (a subprocess), and `runtime.annotate` on crafted answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from runtime.annotate import annotate, label_colour

ROOT = Path(__file__).resolve().parents[1]
TOKENS = "8"  # small: the tiny random model rarely stops on its own


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def assert_usage_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("runtime: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    """Pixels where `after` differs from `before`, as an HxW bool mask."""
    return (np.asarray(after) != np.asarray(before.convert("RGB"))).any(axis=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two good images, three bad ones (random bytes, truncated PNG, empty), and a non-image file."""
    folder = tmp_path_factory.mktemp("inputs")
    make_image(13, (320, 240)).save(folder / "a.png")  # seed picked: the tiny model finds a box in it
    make_image(11, (200, 300)).save(folder / "b.jpg")
    (folder / "c.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    png = (folder / "a.png").read_bytes()
    (folder / "d.png").write_bytes(png[: len(png) // 2])
    (folder / "e.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def folder_run(onnx_artifact, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("annotated") / "out"
    proc = run_cli("--model", onnx_artifact, folder, "--task", "<OD>", "--max-new-tokens", TOKENS, "--annotate", out)
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc, records, out


def test_folder_reports_each_image_and_exits_1(folder_run, folder):
    proc, records, _ = folder_run
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    results = {Path(r["image"]).name: r for r in records if "result" in r}
    errors = {Path(r["image"]).name: r for r in records if "error" in r}
    assert sorted(results) == ["a.png", "b.jpg"]
    assert sorted(errors) == ["c.jpg", "d.png", "e.png"]  # notes.txt is not an image file: not picked up
    for record in records:
        assert record["task"] == "<OD>"
    for record in results.values():
        assert set(record) == {"image", "task", "result", "seconds", "image_size", "files"} and record["seconds"] >= 0
    assert results["a.png"]["image_size"] == [320, 240] and results["b.jpg"]["image_size"] == [200, 300]
    for record in errors.values():
        assert "\n" not in record["error"]
    stderr = proc.stderr.splitlines()
    assert len(stderr) == 4 and all(line.startswith("runtime: error: ") for line in stderr[:3])
    assert stderr[3].startswith("runtime: 5 items: 2 answered, 0 skipped (already done), 3 failed in ")
    assert "truncated" in errors["d.png"]["error"] and "empty" in errors["e.png"]["error"]


def test_cli_result_equals_in_process_result(folder_run, folder, onnx_artifact):
    from runtime import Florence2

    _, records, _ = folder_run
    model = Florence2.load(onnx_artifact)
    for record in (r for r in records if "result" in r):
        expected = model(record["image"], "<OD>", max_new_tokens=int(TOKENS))["<OD>"]
        assert record["result"] == json.loads(json.dumps(expected))


def test_annotate_writes_one_png_per_good_image(folder_run, folder):
    _, records, out = folder_run
    # Named after the whole file name, so a.jpg and a.png would stay apart; each record names its file.
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.png.png", "b.jpg.png"]
    for record in (r for r in records if "result" in r):
        source = Image.open(record["image"]).convert("RGB")
        assert record["files"] == [str(out / (Path(record["image"]).name + ".png"))]
        drawn = Image.open(record["files"][0])
        assert drawn.format == "PNG" and drawn.size == source.size
        mask = changed(source, drawn.convert("RGB"))
        assert mask.any() == bool(record["result"]["bboxes"])
        for x0, y0, x1, y1 in record["result"]["bboxes"]:
            assert mask[(y0 + y1) // 2, min(x0, x1)]  # on the box's left edge
    boxes = sum(len(r["result"]["bboxes"]) for r in records if "result" in r)
    assert boxes, "the tiny model found no box in either image: pick another seed for a.png"


def test_batches_give_the_same_results(onnx_artifact, folder, folder_run):
    _, records, _ = folder_run
    proc = run_cli("--model", onnx_artifact, folder / "a.png", folder / "b.jpg", "--task", "<OD>",
                   "--max-new-tokens", TOKENS, "--batch-size", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    batched = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["result"] for r in batched] == [r["result"] for r in records if "result" in r]


def test_unknown_task_suggests_the_closest(onnx_artifact, folder):
    proc = run_cli("--model", onnx_artifact, folder, "--task", "<ODD>")
    assert_usage_error(proc, "'<ODD>'", "did you mean '<OD>'?")


def test_text_for_a_task_without_input(onnx_artifact, folder):
    assert_usage_error(run_cli("--model", onnx_artifact, folder, "--task", "<OD>", "--text", "a cat"), "<OD>")


def test_missing_text_for_a_task_with_input(onnx_artifact, folder):
    assert_usage_error(run_cli("--model", onnx_artifact, folder, "--task", "<CAPTION_TO_PHRASE_GROUNDING>"),
                       "needs a text input")


def test_model_that_is_not_an_artifact(folder, tmp_path):
    assert_usage_error(run_cli("--model", tmp_path, folder, "--task", "<OD>"), "not a florence2-edge artifact")


def test_missing_input_folder(onnx_artifact, tmp_path):
    assert_usage_error(run_cli("--model", onnx_artifact, tmp_path / "nope", "--task", "<OD>"), "nope")


@pytest.mark.parametrize("args, fragment", [
    (["--batch-size", "0"], "--batch-size"),
    (["--max-new-tokens", "many"], "--max-new-tokens"),
    (["--num-beans", "2"], "did you mean --num-beams?"),
])
def test_bad_options_are_one_line(onnx_artifact, folder, args, fragment):
    assert_usage_error(run_cli("--model", onnx_artifact, folder, "--task", "<OD>", *args), fragment)


# --- annotate() on crafted answers ------------------------------------------------------------------

@pytest.fixture
def gray() -> Image.Image:
    return Image.new("RGB", (200, 160), (128, 128, 128))


def test_bboxes_are_drawn_on_a_copy(gray):
    original = gray.tobytes()
    drawn = annotate(gray, {"bboxes": [[20, 30, 120, 110], [150, 140, 130, 100]], "labels": ["cat", "dog"]})
    assert gray.tobytes() == original and drawn is not gray and drawn.size == gray.size
    mask = changed(gray, drawn)
    assert mask[70, 20] and mask[110, 70]  # left and bottom edges of the first box
    assert mask[120, 130] and mask[120, 150]  # the inverted second box is drawn, normalised
    assert not mask[70, 70]  # boxes are outlines
    assert tuple(drawn.getpixel((20, 70))) == label_colour(0)
    assert tuple(drawn.getpixel((150, 120))) == label_colour(1)


def test_same_label_same_colour(gray):
    drawn = annotate(gray, {"bboxes": [[10, 40, 60, 100], [100, 40, 150, 100]], "labels": ["cat", "cat"]})
    assert drawn.getpixel((10, 70)) == drawn.getpixel((100, 70)) == label_colour(0)


def test_quad_boxes(gray):
    drawn = annotate(gray, {"quad_boxes": [[20, 40, 180, 40, 180, 120, 20, 120]], "labels": ["TEXT"]})
    mask = changed(gray, drawn)
    assert mask[80, 20] and mask[80, 180] and not mask[80, 100]


def test_polygons_skip_those_under_three_points(gray):
    answer = {"polygons": [[[30, 30, 90, 30, 60, 90]], [[150, 20, 190, 150]]], "labels": ["", ""]}
    mask = changed(gray, annotate(gray, answer))
    assert mask[50, 60]  # inside the triangle: filled
    assert not mask[:, 120:].any()  # the 2-point "polygon" draws nothing
    two_points_only = {"polygons": [[[150, 20, 190, 150]]], "labels": ["stick"]}
    assert not changed(gray, annotate(gray, two_points_only)).any()


def test_open_vocabulary_mix_of_boxes_and_polygons(gray):
    answer = {"bboxes": [[10, 60, 60, 150]], "bboxes_labels": ["box"],
              "polygons": [[[120, 60, 190, 60, 190, 150, 120, 150]]], "polygons_labels": ["shape"]}
    drawn = annotate(gray, answer)
    mask = changed(gray, drawn)
    assert mask[100, 10] and not mask[100, 35]  # box outline only
    assert mask[100, 155]  # polygon filled
    assert drawn.getpixel((10, 100)) != drawn.getpixel((120, 100))  # two labels, two colours
    empty = {"bboxes": [], "bboxes_labels": [], "polygons": [], "polygons_labels": []}
    assert not changed(gray, annotate(gray, empty)).any()


def test_caption_string(gray):
    drawn = annotate(gray, "A gray square.")
    mask = changed(gray, drawn)
    assert drawn.size == gray.size and mask[:20].any() and not mask[80:].any()
    assert not changed(gray, annotate(gray, "   ")).any()


def test_other_modes_and_wild_coordinates():
    image = Image.new("L", (64, 48), 200)
    drawn = annotate(image, {"bboxes": [[-2147483648, 5, 10**9, 40]], "labels": ["ünïcode"]})
    assert drawn.mode == "RGB" and drawn.size == image.size and image.mode == "L"
    with pytest.raises(TypeError):
        annotate(image, 42)
