"""Held-out scores of a model on synthetic scenes, per task.

    python -m export.synthetic.score --model export/synthetic/weights --scenes 500 --seed 1000
    python -m export.synthetic.score --model florence2-embedded-onnx --scenes 200 --num-beams 1

`--model` is a transformers checkpoint folder (run by transformers' generate() and
`post_process_generation`) or an exported artifact folder (run by `runtime.Florence2`). Scenes come
from `scenes.make_scene(seed, index, level)` for index 0..N-1: use a seed never used in training
(training uses seed 0; its periodic evaluation and this command default to seed 1000).

The metric functions take parsed answers (as `post_process_generation` returns them) and the scene's
ground truth, and need neither torch nor transformers, so the runtime-side tests use them as they are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .scenes import TASK_ORDER, Scene, make_scene

IOU_THRESHOLD = 0.5
HELDOUT_SEED = 1000


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(predicted: list[tuple[str, Sequence[float]]], truth: list[tuple[str, Sequence[float]]],
                threshold: float = IOU_THRESHOLD) -> int:
    """True positives: greedy one-to-one matching, best IoU first, labels equal and IoU >= threshold."""
    pairs = sorted(((box_iou(p[1], t[1]), i, j) for i, p in enumerate(predicted) for j, t in enumerate(truth)
                    if p[0] == t[0]), reverse=True)
    used_p, used_t, hits = set(), set(), 0
    for iou, i, j in pairs:
        if iou < threshold:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            hits += 1
    return hits


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def polygon_mask(polygons: list[Sequence[float]], size: tuple[int, int]) -> np.ndarray:
    """Union of flat [x0, y0, x1, y1, ...] polygons as a boolean mask of `size` (width, height)."""
    mask = Image.new("1", size, 0)
    draw = ImageDraw.Draw(mask)
    for flat in polygons:
        points = [(float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]
        if len(points) >= 3:
            draw.polygon(points, fill=1)
    return np.asarray(mask, dtype=bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@dataclass
class Tally:
    """Sums over scenes; `scores()` turns them into the task-level figures."""

    counts: dict = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, **values: float) -> None:
        for key, value in values.items():
            self.counts[key] = self.counts.get(key, 0.0) + value

    def scores(self) -> dict[str, float]:
        c = self.counts
        out: dict[str, float] = {}
        for name in ("od", "grounding", "ocr_region"):
            if f"{name}_truth" in c:
                precision = c[f"{name}_hits"] / c[f"{name}_pred"] if c[f"{name}_pred"] else 0.0
                recall = c[f"{name}_hits"] / c[f"{name}_truth"] if c[f"{name}_truth"] else 0.0
                f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
                out.update({f"{name}_precision": precision, f"{name}_recall": recall, f"{name}_f1": f1})
        for name in ("ocr_exact", "caption_exact", "mask_iou"):
            if f"{name}_n" in c:
                out[name] = c[name] / c[f"{name}_n"]
        if "ocr_chars" in c:
            out["ocr_cer"] = c["ocr_edits"] / max(1.0, c["ocr_chars"])
        return out


def score_answer(tally: Tally, scene: Scene, task: str, answer) -> None:
    """Add one parsed answer (the value of post_process_generation's {task: answer}) to `tally`."""
    if task == "<OD>":
        predicted = list(zip(answer["labels"], answer["bboxes"]))
        truth = [(s.kind, s.box) for s in scene.shapes]
        tally.add(od_hits=match_boxes(predicted, truth), od_pred=len(predicted), od_truth=len(truth))
    elif task == "<CAPTION_TO_PHRASE_GROUNDING>":
        shape = scene.shapes[scene.referent]
        predicted = list(zip(answer["labels"], answer["bboxes"]))
        tally.add(grounding_hits=match_boxes(predicted, [(shape.phrase, shape.box)]),
                  grounding_pred=len(predicted), grounding_truth=1)
    elif task == "<OCR>":
        truth = " ".join(line.text for line in scene.lines)
        tally.add(ocr_exact=float(answer.strip() == truth), ocr_exact_n=1,
                  ocr_edits=edit_distance(answer.strip(), truth), ocr_chars=len(truth))
    elif task == "<OCR_WITH_REGION>":
        predicted = [(label, _quad_box(quad)) for label, quad in zip(answer["labels"], answer["quad_boxes"])]
        truth = [(line.text, line.box) for line in scene.lines]
        tally.add(ocr_region_hits=match_boxes(predicted, truth), ocr_region_pred=len(predicted),
                  ocr_region_truth=len(truth))
    elif task == "<CAPTION>":
        from .scenes import caption

        tally.add(caption_exact=float(answer.strip() == caption(scene.shapes)), caption_exact_n=1)
    elif task == "<REFERRING_EXPRESSION_SEGMENTATION>":
        shape = scene.shapes[scene.referent]
        predicted = polygon_mask([p for instance in answer["polygons"] for p in instance], scene.size)
        truth = polygon_mask([[v for point in shape.polygon for v in point]], scene.size)
        tally.add(mask_iou=mask_iou(predicted, truth), mask_iou_n=1)
    else:
        raise ValueError(f"no score for task {task!r}; expected one of {', '.join(TASK_ORDER)}")


def _quad_box(quad: Sequence[float]) -> tuple[float, float, float, float]:
    xs, ys = quad[0::2], quad[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def task_input(scene: Scene, task: str) -> str | None:
    return next(e.text for e in scene.examples() if e.task == task)


# A runner answers one task for a batch of scenes: (scenes, task, texts) -> parsed answers.
Runner = Callable[[list[Scene], str, list], list]


def evaluate(run: Runner, scenes: list[Scene], tasks: Sequence[str] = TASK_ORDER, batch: int = 16) -> Tally:
    tally = Tally()
    start = time.perf_counter()
    for task in tasks:
        for i in range(0, len(scenes), batch):
            chunk = scenes[i : i + batch]
            for scene, answer in zip(chunk, run(chunk, task, [task_input(s, task) for s in chunk])):
                score_answer(tally, scene, task, answer)
    tally.seconds = time.perf_counter() - start
    return tally


def transformers_runner(folder: str | Path, num_beams: int | None = None, max_new_tokens: int | None = None) -> Runner:
    """Answers from a transformers checkpoint folder: generate() + post_process_generation."""
    import torch
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    model = Florence2ForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    options = {k: v for k, v in (("num_beams", num_beams), ("max_new_tokens", max_new_tokens)) if v is not None}
    return lambda scenes, task, texts: generate_answers(model, processor, scenes, task, texts, **options)


def generate_answers(model, processor, scenes: list[Scene], task: str, texts: list, **options) -> list:
    import torch

    prompts = [task if text is None else task + text for text in texts]
    inputs = processor(text=prompts, images=[s.image for s in scenes], return_tensors="pt", padding=True)
    with torch.no_grad():
        ids = model.generate(**inputs, **options)
    decoded = processor.batch_decode(ids, skip_special_tokens=False)
    return [processor.post_process_generation(text, task=task, image_size=s.size)[task]
            for text, s in zip(decoded, scenes)]


def runtime_runner(folder: str | Path, num_beams: int | None = None, max_new_tokens: int | None = None) -> Runner:
    """Answers from an exported artifact: runtime.Florence2 (any backend the artifact names)."""
    from runtime import Florence2

    model = Florence2.load(folder)
    options = {k: v for k, v in (("num_beams", num_beams), ("max_new_tokens", max_new_tokens)) if v is not None}

    def run(scenes, task, texts):
        text = None if texts[0] is None else texts
        return [r[task] for r in model([s.image for s in scenes], task, text, **options)]

    return run


def held_out(count: int, seed: int = HELDOUT_SEED, level: int = 3, size: tuple[int, int] = (192, 192)) -> list[Scene]:
    return [make_scene(seed, index, level, size) for index in range(count)]


def format_scores(scores: dict[str, float]) -> str:
    return "  ".join(f"{key} {value:.3f}" for key, value in scores.items())


def _image_size(folder: Path) -> tuple[int, int]:
    """The input size the model declares: the manifest's preprocessing or the processor's size."""
    for name, keys in (("manifest.json", ("preprocessing", "size")), ("preprocessor_config.json", ("size",)),
                       ("processor_config.json", ("image_processor", "size"))):
        path = folder / name
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8"))
            for key in keys:
                value = value.get(key, {}) if isinstance(value, dict) else {}
            if isinstance(value, dict) and "width" in value:
                return int(value["width"]), int(value["height"])
            if isinstance(value, list) and len(value) == 2:
                return int(value[1]), int(value[0])
    raise SystemExit(f"score: error: {folder} declares no image size (expected a checkpoint or artifact folder)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export.synthetic.score", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="checkpoint folder (config.json) or artifact folder (manifest.json)")
    parser.add_argument("--scenes", type=int, default=200, help="held-out scenes (default 200)")
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED, help=f"scene stream (default {HELDOUT_SEED}; training uses 0)")
    parser.add_argument("--level", type=int, default=3, help="curriculum level of the scenes (default 3, the final one)")
    parser.add_argument("--num-beams", type=int, help="default: the model's generation config (3)")
    parser.add_argument("--tasks", nargs="+", default=list(TASK_ORDER), help="default: every task")
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.model / "manifest.json").is_file():
        run = runtime_runner(args.model, args.num_beams)
    elif (args.model / "config.json").is_file():
        run = transformers_runner(args.model, args.num_beams)
    else:
        print(f"score: error: {args.model} has neither manifest.json (artifact) nor config.json (checkpoint)", file=sys.stderr)
        return 2
    scenes = held_out(args.scenes, args.seed, args.level, _image_size(args.model))
    tally = evaluate(run, scenes, args.tasks)
    scores = tally.scores()
    if args.json:
        print(json.dumps({"scenes": args.scenes, "seed": args.seed, "level": args.level, **scores}))
    else:
        print(f"{args.scenes} scenes (seed {args.seed}, level {args.level}) in {tally.seconds:.0f} s")
        print(format_scores(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
