"""Training batches from scenes, and the losses and probes computed on them.

A batch holds B images and M >= B prompts; `owner[m]` is the image of prompt m, so the vision tower
runs once per image however many tasks ask about it. The encoder input is laid out as
Florence2Processor lays it out: the image's features where its `<image>` tokens are, then
`<s> prompt </s>`. Labels are `<s> target </s>`, decoder inputs the same shifted right after the
decoder start token `</s>`, so a trained model generates exactly "</s><s>target</s>".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from runtime.prompts import build_prompt

from .scenes import CHARACTERS, COLOURS, SHAPES, TASK_ORDER, Example, Scene, make_scene

IGNORE = -100
_CELL = 32  # pixels per final-stage grid cell: DaViT strides 4 * 2 * 2 * 2


@dataclass(frozen=True)
class Batch:
    pixels: object  # float32 [B, 3, S, S]
    owner: object  # int64 [M]: image index of each prompt
    input_ids: object  # int64 [M, L]: <image> * N, <s>, prompt, </s>, padding
    attention_mask: object  # int64 [M, L]
    decoder_ids: object  # int64 [M, T]
    labels: object  # int64 [M, T], IGNORE on padding
    kind_targets: object  # float32 [B, g*g, 2 + len(SHAPES)]: area share of background, text, each kind
    colour_targets: object  # float32 [B, g*g, 1 + len(COLOURS)]: area share of no colour, each colour
    char_targets: object  # float32 [B, g*g, len(CHARACTERS)]: 1 where a character's centre is in the cell
    loc_first: int  # id of <loc_0>

    def with_rolled_images(self) -> "Batch":
        """Each prompt paired with the next scene's image: the loss gap to the true pairing measures
        how much the model reads the picture."""
        return dataclasses.replace(self, owner=(self.owner + 1) % self.pixels.shape[0])


def training_batch(step: int, recipe, processor, size: tuple[int, int]) -> Batch:
    """The batch of `step`: a pure function of (recipe.seed, step)."""
    rng = np.random.default_rng([recipe.seed, step, 7])
    level = recipe.level_at(step)
    scenes = []
    for i in range(recipe.images):
        scene_level = level
        if level > 1 and rng.random() < recipe.review:
            scene_level = int(rng.integers(1, level))
        scenes.append(make_scene(recipe.seed, step * recipe.images + i, scene_level, size))
    return make_batch(scenes, processor, rng, recipe)


def choose_examples(scene: Scene, rng, recipe) -> list[Example]:
    tasks, weights = zip(*recipe.task_weights)
    weights = np.array(weights, dtype=np.float64)
    if not scene.lines:  # still taught, but rarely: an empty answer is an easy attractor (measured)
        weights *= [0.1 if "OCR" in task else 1.0 for task in tasks]
    picks = rng.choice(len(tasks), size=recipe.tasks_per_image, replace=False, p=weights / weights.sum())
    examples = scene.examples(int(rng.integers(len(scene.shapes))))
    return [next(e for e in examples if e.task == tasks[k]) for k in sorted(picks)]


def make_batch(scenes: list[Scene], processor, rng, recipe, every_task: bool = False) -> Batch:
    import torch

    tokenizer = processor.tokenizer
    image_tokens = processor.image_processor.image_seq_length
    prompts, targets, owner = [], [], []
    for index, scene in enumerate(scenes):
        examples = scene.examples() if every_task else choose_examples(scene, rng, recipe)
        for example in examples:
            prompts.append([tokenizer.image_token_id] * image_tokens
                           + tokenizer(build_prompt(example.task, example.text)).input_ids)
            targets.append(tokenizer(example.target).input_ids)
            owner.append(index)
    input_ids, attention_mask = _pad(prompts, tokenizer.pad_token_id)
    labels, _ = _pad(targets, IGNORE)
    decoder_ids = torch.full_like(labels, tokenizer.pad_token_id)
    decoder_ids[:, 0] = 2  # decoder_start_token_id
    decoder_ids[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == IGNORE, tokenizer.pad_token_id)
    pixels = processor.image_processor([s.image for s in scenes], return_tensors="pt").pixel_values
    kinds, colours, chars = (torch.from_numpy(np.stack(t)) for t in zip(*(cell_targets(s) for s in scenes)))
    return Batch(pixels, torch.tensor(owner), input_ids, attention_mask, decoder_ids, labels, kinds, colours, chars,
                 tokenizer.convert_tokens_to_ids("<loc_0>"))


def _pad(rows: list[list[int]], value: int):
    import torch

    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), value, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def cell_targets(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per final-stage grid cell: the area share of each kind class and each colour class, and which
    characters are centred in it."""
    width, height = scene.size
    kinds = Image.new("L", scene.size, 0)
    colours = Image.new("L", scene.size, 0)
    draw_kind, draw_colour = ImageDraw.Draw(kinds), ImageDraw.Draw(colours)
    for line in scene.lines:
        draw_kind.rectangle(line.box, fill=1)
    for shape in scene.shapes:
        draw_kind.polygon(shape.polygon, fill=2 + SHAPES.index(shape.kind))
        draw_colour.polygon(shape.polygon, fill=1 + list(COLOURS).index(shape.colour))
    cols = width // _CELL
    chars = np.zeros(((height // _CELL) * cols, len(CHARACTERS)), dtype=np.float32)
    for line in scene.lines:
        for char, (x, y) in line.char_centres():
            row, col = min(int(y) // _CELL, height // _CELL - 1), min(int(x) // _CELL, cols - 1)
            chars[row * cols + col, CHARACTERS.index(char)] = 1.0
    return (_cell_shares(np.asarray(kinds), 2 + len(SHAPES)), _cell_shares(np.asarray(colours), 1 + len(COLOURS)),
            chars)


def _cell_shares(labels: np.ndarray, classes: int) -> np.ndarray:
    rows, cols = labels.shape[0] // _CELL, labels.shape[1] // _CELL
    cells = labels[: rows * _CELL, : cols * _CELL].reshape(rows, _CELL, cols, _CELL).transpose(0, 2, 1, 3)
    cells = cells.reshape(rows * cols, _CELL * _CELL)
    return np.stack([(cells == k).mean(1) for k in range(classes)], axis=1).astype(np.float32)


def lm_loss(model, batch: Batch, loc_sigma: float):
    """(mean token loss, vision tower output [B, C, g, g])."""
    import torch

    vision = model.model.vision_tower(batch.pixels).last_hidden_state
    features = model.model.multi_modal_projector(vision)[batch.owner]
    embeds = model.get_input_embeddings()(batch.input_ids)
    embeds = torch.cat([features, embeds[:, features.shape[1] :]], dim=1)
    out = model(inputs_embeds=embeds, attention_mask=batch.attention_mask, decoder_input_ids=batch.decoder_ids,
                use_cache=False)
    return token_loss(out.logits, batch.labels, batch.loc_first, loc_sigma), vision


def token_loss(logits, labels, loc_first: int, sigma: float):
    """Cross-entropy; location labels (with sigma > 0) against a Gaussian over the bins near the true one."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = labels != IGNORE
    nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    is_loc = mask & (labels >= loc_first) & (labels < loc_first + 1000)
    if sigma > 0 and bool(is_loc.any()):
        reach = max(1, int(3 * sigma))
        offsets = torch.arange(-reach, reach + 1)
        bins = (labels[is_loc] - loc_first).unsqueeze(1) + offsets
        weights = torch.exp(-offsets.float() ** 2 / (2 * sigma**2)) * ((bins >= 0) & (bins < 1000))
        weights = weights / weights.sum(1, keepdim=True)
        nll = nll.clone()
        nll[is_loc] = -(weights * logp[is_loc].gather(1, bins.clamp(0, 999) + loc_first)).sum(1)
    return nll[mask].mean()


def feature_cosine(model, pixels) -> float:
    """Mean pairwise cosine of the vision tower's outputs for a batch (1.0: every image looks the same)."""
    import torch

    features = model.model.vision_tower(pixels).last_hidden_state.flatten(1)
    features = torch.nn.functional.normalize(features, dim=1)
    cos = features @ features.T
    count = cos.shape[0]
    return float((cos.sum() - cos.diagonal().sum()) / (count * (count - 1)))


__all__ = ["Batch", "TASK_ORDER", "training_batch", "make_batch", "lm_loss", "token_loss", "feature_cosine"]
