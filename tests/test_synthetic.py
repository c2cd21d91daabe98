"""The synthetic scenes: ground truth that both parsers read back, determinism, and the scorer's metrics."""

from __future__ import annotations

import numpy as np
import pytest

from export.synthetic import score
from export.synthetic.scenes import LEVELS, TASK_ORDER, make_scene, quantize, repeats_ngram
from runtime.postprocess import parse

SIZES = [(192, 192), (256, 160)]
SCENES = [(seed, index, level) for seed in (0, 1000) for index in range(6) for level in LEVELS]


def decoded(target: str) -> str:
    return "</s><s>" + target + "</s>"  # what generate() yields, decoded with special tokens


def close(parsed, truth, size) -> bool:
    """A parsed coordinate lies within one location bin (plus the int truncation) of the truth."""
    tolerance = np.array([size[0], size[1]] * (len(truth) // 2)) / 1000 + 1
    return bool(np.all(np.abs(np.asarray(parsed, float) - np.asarray(truth, float)) <= tolerance))


def check_answers(answers: dict, scene) -> None:
    od = answers["<OD>"]
    assert od["labels"] == [s.kind for s in scene.shapes]
    assert all(close(b, s.box, scene.size) for b, s in zip(od["bboxes"], scene.shapes))
    assert answers["<OCR>"] == " ".join(line.text for line in scene.lines)
    region = answers["<OCR_WITH_REGION>"]
    assert region["labels"] == [line.text for line in scene.lines]
    assert all(close(q, [v for p in line.quad for v in p], scene.size) for q, line in zip(region["quad_boxes"], scene.lines))
    assert answers["<CAPTION>"][0].isupper() and answers["<CAPTION>"].endswith(".")
    shape = scene.shapes[scene.referent]
    grounding = answers["<CAPTION_TO_PHRASE_GROUNDING>"]
    assert grounding["labels"] == [shape.phrase] and close(grounding["bboxes"][0], shape.box, scene.size)
    (polygon,), = answers["<REFERRING_EXPRESSION_SEGMENTATION>"]["polygons"]
    assert close(polygon, [v for p in shape.polygon for v in p], scene.size)


@pytest.mark.parametrize("seed,index,level", SCENES)
def test_targets_parse_back_to_the_ground_truth(seed, index, level):
    for size in SIZES:
        scene = make_scene(seed, index, level, size)
        answers = {}
        for example in scene.examples():
            answers.update(parse(decoded(example.target), example.task, scene.size))
        check_answers(answers, scene)


def test_scenes_are_deterministic_and_seeds_differ():
    a, b, c = make_scene(0, 3, 3), make_scene(0, 3, 3), make_scene(1000, 3, 3)
    assert a.image.tobytes() == b.image.tobytes() and a.examples() == b.examples()
    assert a.image.tobytes() != c.image.tobytes()


def test_canonical_orders_and_unique_referents():
    for index in range(40):
        scene = make_scene(0, index, 3)
        centres = [(s.box[0] + s.box[2]) / 2 for s in scene.shapes]
        assert centres == sorted(centres)
        tops = [line.box[1] for line in scene.lines]
        assert tops == sorted(tops)
        assert len({s.phrase for s in scene.shapes}) == len(scene.shapes)
        assert not any(repeats_ngram(e.target) for e in scene.examples())


def test_quantize_is_transformers_quantize():
    assert quantize(0.0, 192) == 0 and quantize(191.99, 192) == 999 and quantize(500.0, 192) == 999
    assert quantize(-3.0, 192) == 0 and quantize(96.0, 192) == 500


def test_repeats_ngram():
    assert repeats_ngram("A red circle, a blue circle, a green circle and a red star.")
    assert not repeats_ngram("A red circle, a blue square and a green star.")


@pytest.fixture(scope="module")
def processor():
    pytest.importorskip("transformers")
    from export.synthetic.build import ModelSpec, build_processor, build_tokenizer

    spec = ModelSpec()
    return build_processor(spec, build_tokenizer(spec), (spec.image_size // 32) ** 2 + 1)


@pytest.mark.parametrize("seed,index,level", SCENES[:: 3])
def test_transformers_post_processing_reads_the_targets(processor, seed, index, level):
    scene = make_scene(seed, index, level)
    answers = {}
    for example in scene.examples():
        ids = processor.tokenizer(example.target).input_ids
        text = processor.batch_decode([[2] + ids], skip_special_tokens=False)[0]
        assert text == decoded(example.target)
        answers.update(processor.post_process_generation(text, task=example.task, image_size=scene.size))
        # Generation bans repeated 3-grams (no_repeat_ngram_size=3): a target must have none.
        grams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
        assert len(grams) == len(set(grams)), example
    check_answers(answers, scene)


def test_training_prompts_match_the_processor(processor):
    import torch

    from export.synthetic import batches
    from export.synthetic.train import Recipe

    scenes = [make_scene(0, i, 3) for i in range(3)]
    batch = batches.make_batch(scenes, processor, np.random.default_rng(0), Recipe(), every_task=True)
    row = 0
    for scene in scenes:
        for example in scene.examples():
            prompt = example.task + (example.text or "")
            expected = processor(text=[prompt], images=[scene.image], return_tensors="pt")
            length = expected.input_ids.shape[1]
            assert torch.equal(batch.input_ids[row, :length], expected.input_ids[0])
            assert torch.equal(batch.pixels[batch.owner[row]], expected.pixel_values[0])
            row += 1


def perfect(scene, task):
    """The parsed answer a flawless model gives."""
    example = next(e for e in scene.examples() if e.task == task)
    return parse(decoded(example.target), task, scene.size)[task]


def test_perfect_answers_score_one():
    scenes = [make_scene(1000, i, 3) for i in range(8)]
    tally = score.evaluate(lambda chunk, task, texts: [perfect(s, task) for s in chunk], scenes)
    scores = tally.scores()
    for key in ("od_f1", "ocr_exact", "caption_exact", "grounding_f1", "ocr_region_f1"):
        assert scores[key] == 1.0, key
    assert scores["ocr_cer"] == 0.0 and scores["mask_iou"] > 0.8


def test_box_metrics_on_hand_made_cases():
    truth = [("circle", (0, 0, 10, 10)), ("star", (20, 20, 30, 30))]
    assert score.match_boxes([("circle", (0, 0, 10, 10)), ("star", (20, 20, 30, 30))], truth) == 2
    assert score.match_boxes([("square", (0, 0, 10, 10))], truth) == 0  # label must match
    assert score.match_boxes([("circle", (5, 0, 15, 10))], truth) == 0  # IoU 1/3
    assert score.match_boxes([("circle", (2, 0, 12, 10)), ("circle", (0, 0, 10, 10))], truth) == 1  # one-to-one
    tally = score.Tally()
    tally.add(od_hits=1, od_pred=2, od_truth=1)
    assert tally.scores()["od_precision"] == 0.5 and tally.scores()["od_recall"] == 1.0
    assert tally.scores()["od_f1"] == pytest.approx(2 / 3)


def test_text_and_mask_metrics():
    assert score.edit_distance("OPEN", "OPEN") == 0 and score.edit_distance("OPEN", "OPAN 2") == 3
    square = score.polygon_mask([[0, 0, 10, 0, 10, 10, 0, 10]], (20, 20))
    half = score.polygon_mask([[0, 0, 5, 0, 5, 10, 0, 10]], (20, 20))
    assert score.mask_iou(square, square) == 1.0 and 0.4 < score.mask_iou(square, half) < 0.6
    assert score.mask_iou(square, score.polygon_mask([], (20, 20))) == 0.0


def test_every_task_is_scored():
    assert set(TASK_ORDER) == {e.task for e in make_scene(0, 0, 1).examples()}



def test_write_command_matches_the_scenes_and_never_overwrites(tmp_path):
    import json
    import subprocess
    import sys

    from PIL import Image

    command = [sys.executable, "-m", "export.synthetic.write", "--out", str(tmp_path), "--count", "2", "--size", "160"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    records = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == ["scene-0000.png", "scene-0001.png"]
    for index, record in enumerate(records):
        scene = make_scene(score.HELDOUT_SEED, index, 3, (160, 160))
        assert np.array_equal(np.asarray(Image.open(tmp_path / record["file"])), np.asarray(scene.image))
        assert record["targets"]["<OD>"]["target"] == scene.examples()[1].target
        assert [line["text"] for line in record["lines"]] == [line.text for line in scene.lines]
    before = (tmp_path / "scene-0000.png").read_bytes()
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already holds scene-0000.png" in again.stderr
    assert "Traceback" not in again.stderr and (tmp_path / "scene-0000.png").read_bytes() == before
