"""Turn Florence-2's decoded text into a task answer, value for value as transformers' `post_process_generation`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np

from .tasks import DEFAULT_POST_PROCESSOR_CONFIG, TASKS, Task

Size = tuple[int, int]  # (width, height), the order transformers' dequantize unpacks
Parser = Callable[[str, Size, dict], Any]

_BINS = 1000  # Florence2PostProcessor.quantize_bins, the same along both axes
_LOC = re.compile(r"<loc_(\d+)>")
_LEADING_LOC = re.compile(r"^<loc_\d+>")
_OCR_PATTERN = r"(.+?)" + r"<loc_(\d+)>" * 8

# Runs of four or more coordinate tokens; the "_PHRASES" forms also demand text in front.
_BOX_PHRASES = re.compile(r"([^<]+(?:<loc_\d+>){4,})")
_BOX_RUNS = re.compile(r"(?:<loc_\d+>){4,}")
_BOX = re.compile(r"<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>")
_BOX_LABEL = re.compile(r"^\s*(.*?)(?=<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_)")

_POLY_TOKENS = r"(?:<loc_\d+>|<sep>|<poly>|</poly>)"
_POLY_PHRASES = re.compile(rf"([^<]+{_POLY_TOKENS}{{4,}})")
_POLY_RUNS = re.compile(rf"{_POLY_TOKENS}{{4,}}")
_POLY_LABEL = re.compile(r"^\s*(.*?)(?=<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_|<poly>)")
_POLY_INSTANCE = re.compile(r"<poly>(.*?)</poly>")
_POLY_POINTS = re.compile(r"((?:<loc_\d+>)+)(?:<sep>|$)")


def _dequantize(bins: list[int], size: Size) -> list[int]:
    """Interleaved x, y bins -> pixel coordinates (Python ints) at the bin centres.

    transformers computes this on torch tensors: int64 bins promote to float32, the Python
    per-bin scale is rounded to float32, and `.int()` truncates. numpy float32 rounds identically.
    """
    width, height = size
    per_bin = np.array([width / _BINS, height / _BINS], dtype=np.float32)
    centres = np.asarray(bins, dtype=np.int64).astype(np.float32).reshape(-1, 2) + np.float32(0.5)
    # Bins past about 2**31 / size wrap to INT_MIN as torch's do; numpy would also warn.
    with np.errstate(invalid="ignore"):
        return (centres * per_bin).astype(np.int32).ravel().tolist()


def _strip_specials(text: str) -> str:
    # Sequential replaces, like the reference: "</<s>s>" loses both tokens.
    return text.replace("<s>", "").replace("</s>", "").replace("<pad>", "")


def _ascii(label: str) -> str:
    return label.encode("ascii", "ignore").decode("ascii")


def _box_phrases(text: str, size: Size, allow_empty_phrase: bool) -> list[tuple[str, list[list[int]]]]:
    """(stripped label, boxes) per phrase, as parse_description_with_bboxes_from_text_and_spans.

    The reference also removes one "<ground>" and one "<obj>" per phrase; neither pattern can
    capture those, so that step is left out. Every match holds a box, so no empty check either.
    """
    pattern = _BOX_RUNS if allow_empty_phrase else _BOX_PHRASES
    phrases = []
    for phrase_text in pattern.findall(_strip_specials(text)):
        # `.` stops at a newline, so a label spanning lines drops the whole phrase.
        match = _BOX_LABEL.search(phrase_text)
        if match is None:
            continue
        bins = [int(b) for box in _BOX.findall(phrase_text) for b in box]
        coords = _dequantize(bins, size)
        phrases.append((match.group().strip(), [coords[i : i + 4] for i in range(0, len(coords), 4)]))
    return phrases


def _polygon_phrases(text: str, size: Size, allow_empty_phrase: bool) -> list[tuple[str, list[list[int]]]]:
    """(label, polygons) per instance, as parse_description_with_polygons_from_text_and_spans."""
    pattern = _POLY_RUNS if allow_empty_phrase else _POLY_PHRASES
    instances = []
    for phrase_text in pattern.findall(_strip_specials(text)):
        # Dropping the first loc token means a bare run can yield "<sep>" or "</poly>" as its label.
        match = _POLY_LABEL.search(_LEADING_LOC.sub("", phrase_text, count=1))
        if match is None:
            continue
        label = match.group().strip()
        if "<poly>" in phrase_text and "</poly>" in phrase_text:
            parts = _POLY_INSTANCE.findall(phrase_text)
        else:
            parts = [phrase_text]
        for part in parts:
            runs = _POLY_POINTS.findall(part)
            if not runs:
                continue
            polygons = []
            for run in runs:
                bins = [int(b) for b in _LOC.findall(run)]
                # An odd trailing coordinate is dropped; a single one leaves an empty polygon.
                polygons.append(_dequantize(bins[: len(bins) // 2 * 2], size))
            instances.append((label, polygons))
    return instances


def _parse_pure_text(text: str, size: Size, config: dict) -> str:
    # Unlike every other parse type, "<pad>" is kept here.
    return text.replace("<s>", "").replace("</s>", "").strip()


def _parse_ocr(text: str, size: Size, config: dict) -> dict:
    # transformers reads upper-case keys, so the lower-case ones real checkpoints ship are ignored.
    options = config["ocr"]
    pattern = options.get("PATTERN")
    area_threshold = options.get("AREA_THRESHOLD", 0.0)
    width, height = size
    quad_boxes, labels = [], []
    for content, *quad in re.findall(_OCR_PATTERN if pattern is None else pattern, _strip_specials(text)):
        quad_box = _dequantize([int(b) for b in quad], size)
        if area_threshold > 0:
            xs, ys = quad_box[0::2], quad_box[1::2]
            # The reference's shoelace sum stops at range(3), leaving out the closing edge.
            area = 0.5 * abs(sum(xs[i] * ys[i + 1] - xs[i + 1] * ys[i] for i in range(4 - 1)))
            if area < (width * height) * area_threshold:
                continue
        quad_boxes.append(quad_box)
        labels.append(content.strip())
    return {"quad_boxes": quad_boxes, "labels": labels}


def _parse_bboxes(text: str, size: Size, config: dict, allow_empty_phrase: bool) -> dict:
    bboxes, labels = [], []
    for label, boxes in _box_phrases(text, size, allow_empty_phrase):
        bboxes.extend(boxes)
        labels.extend([_ascii(label)] * len(boxes))
    return {"bboxes": bboxes, "labels": labels}


def _parse_phrase_grounding(text: str, size: Size, config: dict) -> dict:
    banned = set(config.get("phrase_grounding", {}).get("banned_grounding_tokens", []))
    bboxes, labels = [], []
    for label, boxes in _box_phrases(text, size, allow_empty_phrase=False):
        # Checked before the non-ASCII characters are dropped, as the reference does.
        if label in banned:
            continue
        bboxes.extend(boxes)
        labels.extend([_ascii(label)] * len(boxes))
    return {"bboxes": bboxes, "labels": labels}


def _parse_polygons(text: str, size: Size, config: dict, allow_empty_phrase: bool) -> dict:
    # Polygon labels keep their non-ASCII characters, unlike box labels.
    instances = _polygon_phrases(text, size, allow_empty_phrase)
    return {"polygons": [polygons for _, polygons in instances], "labels": [label for label, _ in instances]}


def _parse_bboxes_or_polygons(text: str, size: Size, config: dict) -> dict:
    # One "<poly>" anywhere in the raw text switches the whole answer to polygons.
    if "<poly>" in text:
        boxes = {"bboxes": [], "labels": []}
        polygons = _parse_polygons(text, size, config, allow_empty_phrase=False)
    else:
        boxes = _parse_bboxes(text, size, config, allow_empty_phrase=False)
        polygons = {"polygons": [], "labels": []}
    return {
        "bboxes": boxes["bboxes"],
        "bboxes_labels": boxes["labels"],
        "polygons": polygons["polygons"],
        "polygons_labels": polygons["labels"],
    }


PARSERS: dict[str, Parser] = {
    "pure_text": _parse_pure_text,
    "ocr": _parse_ocr,
    "phrase_grounding": _parse_phrase_grounding,
    "description_with_bboxes": partial(_parse_bboxes, allow_empty_phrase=False),
    "bboxes": partial(_parse_bboxes, allow_empty_phrase=True),
    "description_with_polygons": partial(_parse_polygons, allow_empty_phrase=False),
    "polygons": partial(_parse_polygons, allow_empty_phrase=True),
    "description_with_bboxes_or_polygons": _parse_bboxes_or_polygons,
}


def parse(text: str, task: str, image_size: Size, config: dict | None = None,
          tasks: Mapping[str, Task] | None = None) -> dict:
    """Return `{task: answer}` for the decoded `text` (special tokens kept) of an image of `image_size`.

    `image_size` is (width, height). `config` is the processor's `post_processor_config`; like
    transformers, a parse type missing from it is an error. `tasks` is the task table to read the
    parse type from (a loaded model passes its artifact's; default: Florence-2's own). An unknown task
    parses as pure text, as in transformers.
    """
    config = DEFAULT_POST_PROCESSOR_CONFIG if config is None else config
    tasks = TASKS if tasks is None else tasks
    parse_type = tasks[task].parse_type if task in tasks else "pure_text"
    if parse_type not in config:
        raise ValueError(f"Unsupported parse task: {parse_type!r}; the post-processor config has {sorted(config)}")
    if parse_type not in PARSERS:
        raise ValueError(f"Unknown parse type {parse_type!r}; expected one of {sorted(PARSERS)}")
    return {task: PARSERS[parse_type](text, image_size, config)}
