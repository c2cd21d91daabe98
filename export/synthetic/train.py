"""Train the small synthetic Florence-2 on CPU, resumably.

    python -m export.synthetic.train --out /work/train-runs/run1            # a new run
    python -m export.synthetic.train --out /work/train-runs/run1 --resume   # continue where it stopped
    python -m export.synthetic.train --out RUN --export export/synthetic/weights   # write the best checkpoint

Every step is a pure function of (seed, step): the scenes are `make_scene(seed, step * images + i,
level)` and the task picks come from a numpy generator seeded with (seed, step), so a resumed run
sees exactly the data it would have seen, and `state.pt` needs no data-loader or RNG state.

The recipe (see `Recipe`): a curriculum over scene levels (one large shape / one word, then a few,
then the final mix, with earlier levels kept in review), several task prompts per image sharing one
vision pass, AdamW with warm-up and cosine decay, gradient clipping, and two training-only aids that
the shipped checkpoint does not contain: a dense auxiliary head on the vision tower (predicts each
grid cell's shape kind and colour, so the tower learns image features from the first step rather
than waiting for the decoder to ask), and location tokens scored against a Gaussian over nearby bins
(a prediction one bin off is nearly right; plain cross-entropy says it is as wrong as any other).
Progress lines: loss, the image-dependence probes (mean pairwise cosine of the vision features of a
fixed held-out batch: 1.0 means collapse; and the loss gap when each prompt gets another scene's
image: 0 means the decoder ignores the picture), and held-out greedy scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .build import ModelSpec, new_model, save_folder, spec_from_dict
from .scenes import CHARACTERS, COLOURS, LEVELS, SHAPES
from . import batches, score

log = logging.getLogger("export.synthetic")
TASK_WEIGHTS = (("<OD>", 3.0), ("<OCR>", 2.0), ("<OCR_WITH_REGION>", 2.0), ("<CAPTION>", 1.5),
                ("<CAPTION_TO_PHRASE_GROUNDING>", 1.0), ("<REFERRING_EXPRESSION_SEGMENTATION>", 1.0))


@dataclass(frozen=True)
class Recipe:
    steps: int = 12000
    images: int = 8  # scenes per step
    tasks_per_image: int = 3  # prompts per scene, sharing its vision pass
    lr: float = 5e-4
    vision_lr: float = 5e-4
    warmup: int = 800
    min_lr: float = 0.05  # of lr, at the end of the cosine
    weight_decay: float = 0.01
    clip: float = 1.0
    curriculum: tuple[tuple[float, int], ...] = ((0.0, 1), (0.2, 2), (0.45, 3))  # (fraction of steps, level)
    review: float = 0.25  # share of scenes drawn from an earlier level once past level 1
    aux_weight: float = 0.5  # 0 turns the vision head off
    char_weight: float = 1.0  # of the head's character term, within aux_weight
    loc_sigma: float = 6.0  # Gaussian width over location bins (5 bins = 1 px at 192); 0: plain cross-entropy
    loc_init: bool = True  # start <loc_k> embeddings smooth in k (see smooth_locations)
    task_weights: tuple[tuple[str, float], ...] = TASK_WEIGHTS
    seed: int = 0
    eval_every: int = 1000
    eval_scenes: int = 24
    checkpoint_seconds: float = 300.0

    def check(self) -> None:
        levels = [level for _, level in self.curriculum]
        if any(level not in LEVELS for level in levels) or self.curriculum[0][0] != 0.0:
            raise ValueError(f"curriculum must start at 0.0 and use levels {sorted(LEVELS)}; got {self.curriculum}")
        if self.tasks_per_image > len(self.task_weights):
            raise ValueError(f"tasks_per_image {self.tasks_per_image} > {len(self.task_weights)} tasks")

    def level_at(self, step: int) -> int:
        return [level for start, level in self.curriculum if step >= start * self.steps][-1]

    def lr_scale(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.min_lr + (1 - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class AuxHead:
    """Linear maps from each final-stage grid cell to its kind and colour classes and the characters
    centred in it (training only)."""

    KINDS = 2 + len(SHAPES)  # background, text, shapes
    COLOURS = 1 + len(COLOURS)  # none, colours
    CHARS = len(CHARACTERS)

    def __init__(self, channels: int):
        import torch

        self.module = torch.nn.Linear(channels, self.KINDS + self.COLOURS + self.CHARS)

    def loss(self, vision, batch, char_weight: float):
        """vision [B, C, g, g]. Soft cross-entropy against the area shares; characters: binary, per class."""
        import torch

        logits = self.module(vision.flatten(2).transpose(1, 2))
        kinds, colours, chars = logits.split([self.KINDS, self.COLOURS, self.CHARS], dim=-1)
        soft = lambda z, q: -(q * torch.log_softmax(z, -1)).sum(-1).mean()  # noqa: E731
        loss = soft(kinds, batch.kind_targets) + soft(colours, batch.colour_targets)
        if char_weight > 0:
            binary = torch.nn.functional.binary_cross_entropy_with_logits(chars, batch.char_targets, reduction="none")
            loss = loss + char_weight * binary.sum(-1).mean()
        return loss


def smooth_locations(model, loc_first: int, seed: int) -> None:
    """Give <loc_0>..<loc_999> sinusoidal embeddings (wavelengths 16..4000 bins, randomly rotated, at
    the table's own scale): nearby bins start similar, and since the output layer is tied to the
    table, raising one bin's logit raises its neighbours'. Random rows leave 1000 unrelated classes."""
    import torch

    table = model.get_input_embeddings().weight
    width = table.shape[1]
    generator = torch.Generator().manual_seed(seed + 2)
    bins = torch.arange(1000, dtype=torch.float32)[:, None]
    wavelengths = 16 * (4000 / 16) ** (torch.arange(width // 2, dtype=torch.float32) / max(1, width // 2 - 1))
    angles = 2 * math.pi * bins / wavelengths[None]
    features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    rotation, _ = torch.linalg.qr(torch.randn(width, width, generator=generator))  # width is even (ModelSpec.check)
    features = features @ rotation
    with torch.no_grad():
        table[loc_first : loc_first + 1000] = features * (table.std() / features.std())


def build_optimizer(model, aux: AuxHead, recipe: Recipe):
    import torch

    vision = list(model.model.vision_tower.parameters())
    vision_ids = {id(p) for p in vision}
    rest = [p for p in model.parameters() if id(p) not in vision_ids] + list(aux.module.parameters())

    def groups(params, lr):
        decay = [p for p in params if p.ndim >= 2]
        other = [p for p in params if p.ndim < 2]
        return [{"params": decay, "lr": lr, "base_lr": lr, "weight_decay": recipe.weight_decay},
                {"params": other, "lr": lr, "base_lr": lr, "weight_decay": 0.0}]

    return torch.optim.AdamW(groups(vision, recipe.vision_lr) + groups(rest, recipe.lr), betas=(0.9, 0.98))


def train_step(model, aux: AuxHead, optimizer, batch, recipe: Recipe, step: int) -> dict:
    import torch

    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * recipe.lr_scale(step)
    model.train()
    lm_loss, vision = batches.lm_loss(model, batch, recipe.loc_sigma)
    loss = lm_loss
    aux_loss = torch.zeros(())
    if recipe.aux_weight > 0:
        aux_loss = aux.loss(vision, batch, recipe.char_weight)
        loss = loss + recipe.aux_weight * aux_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(aux.module.parameters()), recipe.clip)
    optimizer.step()
    return {"loss": lm_loss.item(), "aux": aux_loss.item(), "grad_norm": norm.item()}


def probe(model, processor, recipe: Recipe, level: int, tasks=None) -> dict:
    """Image dependence and held-out greedy scores, at `level` (scenes of the held-out seed)."""
    import torch

    model.eval()
    spec_size = processor.image_processor.size["height"]
    scenes = score.held_out(recipe.eval_scenes, score.HELDOUT_SEED, level, (spec_size, spec_size))
    probe_batch = batches.make_batch(scenes[:16], processor, np.random.default_rng(0), recipe, every_task=True)
    with torch.no_grad():
        cosine = batches.feature_cosine(model, probe_batch.pixels)
        true_loss, _ = batches.lm_loss(model, probe_batch, 0.0)
        wrong_loss, _ = batches.lm_loss(model, probe_batch.with_rolled_images(), 0.0)
    runner = lambda chunk, task, texts: score.generate_answers(  # noqa: E731
        model, processor, chunk, task, texts, num_beams=1, max_length=96)
    tally = score.evaluate(runner, scenes, tasks or score.TASK_ORDER)
    return {"level": level, "cosine": cosine, "heldout_loss": float(true_loss),
            "image_gap": float(wrong_loss - true_loss), **tally.scores(), "eval_s": tally.seconds}


class Run:
    """A training run's folder: recipe.json, spec.json, state.pt (latest), log.jsonl, best/ (a checkpoint)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.state_path = folder / "state.pt"

    def log(self, record: dict) -> None:
        with open(self.folder / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        log.info("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))

    def save(self, model, aux, optimizer, step: int, elapsed: float, best: float) -> None:
        import torch

        state = {"model": model.state_dict(), "aux": aux.module.state_dict(), "optimizer": optimizer.state_dict(),
                 "step": step, "elapsed": elapsed, "best": best}
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)  # a kill mid-save leaves the previous state intact

    def load(self, model, aux, optimizer) -> tuple[int, float, float]:
        import torch

        state = torch.load(self.state_path, weights_only=True)
        model.load_state_dict(state["model"])
        aux.module.load_state_dict(state["aux"])
        optimizer.load_state_dict(state["optimizer"])
        return state["step"], state["elapsed"], state["best"]


def goal(scores: dict) -> float:
    """One number to keep the best checkpoint by: the mean of the scores the issue sets goals on."""
    keys = ("od_f1", "ocr_exact", "caption_exact", "grounding_f1", "mask_iou", "ocr_region_f1")
    return float(np.mean([scores.get(k, 0.0) for k in keys]))


def train(folder: Path, spec: ModelSpec, recipe: Recipe, resume: bool, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    run = Run(folder)
    model, processor = new_model(spec, recipe.seed)
    aux = AuxHead(spec.vision_dims[-1])
    if recipe.loc_init:
        smooth_locations(model, processor.tokenizer.convert_tokens_to_ids("<loc_0>"), recipe.seed)
    optimizer = build_optimizer(model, aux, recipe)
    step, elapsed, best = 0, 0.0, -1.0
    if resume:
        step, elapsed, best = run.load(model, aux, optimizer)
        log.info(f"resumed at step {step} ({elapsed / 60:.1f} min trained)")
    size = (spec.image_size, spec.image_size)
    last_save, window = time.monotonic(), []
    while step < recipe.steps:
        start = time.monotonic()
        torch.manual_seed(recipe.seed * 1_000_003 + step)
        batch = batches.training_batch(step, recipe, processor, size)
        stats = train_step(model, aux, optimizer, batch, recipe, step)
        step += 1
        elapsed += time.monotonic() - start
        window.append(stats)
        if step % 50 == 0:
            mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            run.log({"step": step, "level": recipe.level_at(step - 1), "lr": recipe.lr * recipe.lr_scale(step),
                     **mean, "min": elapsed / 60})
            window = []
        if step % recipe.eval_every == 0 or step == recipe.steps:
            level = recipe.level_at(step - 1)
            scores = probe(model, processor, recipe, level)
            run.log({"step": step, "eval": 1, **scores, "min": elapsed / 60})
            # Only final-level scores are comparable with each other.
            if level == recipe.curriculum[-1][1] and goal(scores) > best:
                best = goal(scores)
                save_folder(model, processor, folder / "best")
            run.save(model, aux, optimizer, step, elapsed, best)
            last_save = time.monotonic()
        elif time.monotonic() - last_save > recipe.checkpoint_seconds:
            run.save(model, aux, optimizer, step, elapsed, best)
            last_save = time.monotonic()
    save_folder(model, processor, folder / "final")


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")


def _recipe_from_dict(values: dict) -> Recipe:
    def tuples(v):
        return tuple(tuples(x) for x in v) if isinstance(v, list) else v

    return Recipe(**{k: tuples(v) for k, v in values.items()})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export.synthetic.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="run folder (state, logs, best/ and final/ checkpoints)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its state.pt")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON",
                        help="override Recipe or ModelSpec fields for a new run, e.g. steps=2000 lr=3e-4")
    parser.add_argument("--export", type=Path, help="copy the run's best checkpoint to this folder and exit")
    return parser


def _overrides(pairs: list[str]) -> tuple[dict, dict]:
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    spec_fields = {f.name for f in dataclasses.fields(ModelSpec)}
    recipe, spec = {}, {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in recipe_fields | spec_fields:
            raise SystemExit(f"train: error: unknown field {key!r}; expected one of {sorted(recipe_fields | spec_fields)}")
        (recipe if key in recipe_fields else spec)[key] = json.loads(value)
    return recipe, spec


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.export:
        return _export(args.out, args.export)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        if args.set:
            raise SystemExit("train: error: --resume takes the run's own recipe; --set applies to new runs")
        recipe = _recipe_from_dict(json.loads((args.out / "recipe.json").read_text(encoding="utf-8")))
        spec = spec_from_dict(json.loads((args.out / "spec.json").read_text(encoding="utf-8")))
    else:
        if (args.out / "state.pt").exists():
            raise SystemExit(f"train: error: {args.out} holds a run; add --resume, or choose another --out")
        recipe_values, spec_values = _overrides(args.set)
        recipe = _recipe_from_dict({**dataclasses.asdict(Recipe()), **recipe_values})
        spec = spec_from_dict({**dataclasses.asdict(ModelSpec()), **spec_values})
        _write_json(args.out / "recipe.json", dataclasses.asdict(recipe))
        _write_json(args.out / "spec.json", dataclasses.asdict(spec))
    recipe.check()
    spec.check()
    train(args.out, spec, recipe, args.resume, args.threads)
    return 0


def _export(run_folder: Path, target: Path) -> int:
    import shutil

    source = run_folder / "best"
    if not (source / "model.safetensors").is_file():
        raise SystemExit(f"train: error: {source} holds no checkpoint yet")
    shutil.copytree(source, target, dirs_exist_ok=True)
    print(f"copied {source} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
