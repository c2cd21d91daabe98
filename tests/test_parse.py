"""runtime.postprocess.parse against transformers' Florence2Processor.post_process_generation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.postprocess import PARSERS, parse
from runtime.tasks import DEFAULT_POST_PROCESSOR_CONFIG, TASKS

REPO = Path(__file__).resolve().parents[1]
SIZES = [(768, 768), (640, 480), (37, 1001), (1, 1), (4032, 3024)]
UNKNOWN_TASK = "<NOT_A_TASK>"


def build_tokenizer():
    """A tiny byte-level BPE BartTokenizer with Florence-2's special and coordinate tokens."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import BartTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["a cat sits on the mat", "the dog and a red car", "HELLO WORLD 42"],
        vocab_size=320,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    model = json.loads(bpe._tokenizer.to_str())["model"]
    tokenizer = BartTokenizerFast(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])
    extra = ["<od>", "</od>", "<ocr>", "</ocr>", "<poly>", "</poly>", "<sep>", "<region_cap>", "</region_cap>"]
    extra += [f"<loc_{i}>" for i in range(1000)]
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    # As transformers' Florence-2 conversion script does.
    tokenizer.image_token = "<image>"
    tokenizer.add_tokens(AddedToken(tokenizer.image_token, special=True, normalized=False), special_tokens=True)
    tokenizer.image_token_id = tokenizer.encode(tokenizer.image_token, add_special_tokens=False)[0]
    return tokenizer


def build_processor(tokenizer, config):
    from transformers import CLIPImageProcessorPil, Florence2Processor

    image_processor = CLIPImageProcessorPil(
        size={"height": 768, "width": 768}, crop_size={"height": 768, "width": 768}, do_center_crop=False
    )
    image_processor.image_seq_length = 577
    return Florence2Processor(image_processor=image_processor, tokenizer=tokenizer, post_processor_config=config)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer):
    return build_processor(tokenizer, DEFAULT_POST_PROCESSOR_CONFIG)


def typed(value):
    """The value with every leaf paired with its type, so 1 and 1.0 (or True) compare unequal."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [typed(item) for item in value])
    return (type(value).__name__, value)


def assert_same(processor, text, task, size, config=None):
    expected = processor.post_process_generation(text=text, task=task, image_size=size)
    actual = parse(text, task, size, config)
    assert actual == expected, (text, task, size)
    assert typed(actual) == typed(expected), (text, task, size)


def locs(*bins):
    return "".join(f"<loc_{b}>" for b in bins)


BOX_TEXTS = [
    "",
    "</s><s>",
    "<s></s><pad><pad>",
    "</s><s>car" + locs(52, 0, 999, 999) + "door" + locs(1, 2, 3, 4, 5, 6, 7, 8) + "</s><pad><pad>",
    "<s> a red car  " + locs(10, 20, 30, 40) + "  wheel " + locs(0, 0, 0, 0) + "</s>",
    locs(1, 2, 3, 4) + "orphan" + locs(5, 6, 7),  # boxes with no phrase, and a short run
    "cat" + locs(1, 2, 3, 4, 5) + "dog" + locs(6, 7, 8, 9, 10, 11, 12),  # runs of 5 and 7
    "café<s>" + locs(100, 200, 300, 400) + "naïve" + locs(1, 1, 1, 1),  # non-ASCII labels
    "two\nlines" + locs(1, 2, 3, 4) + "\n  next" + locs(5, 6, 7, 8),  # newline inside a label
    "<s>a<s>b</s><s>c" + locs(9, 9, 9, 9) + "</s><s>d" + locs(8, 8, 8, 8) + "</s>",
    "x<od>" + locs(1, 2, 3, 4) + "y<poly>" + locs(1, 2, 3, 4) + "</poly>",
    "</<s>s>big" + locs(999, 999, 999, 999) + "huge" + locs(1000, 12345, 0, 999),
]

GROUNDING_TEXTS = [
    "",
    "</s><s>",
    "<s>A dog" + locs(10, 20, 300, 400) + "it" + locs(1, 2, 3, 4) + " the image " + locs(0, 0, 999, 999) + "</s>",
    "<s>them" + locs(1, 2, 3, 4) + "a man" + locs(1, 2, 3, 4, 500, 600, 700, 800) + "</s><pad>",
    "each other" + locs(1, 2, 3, 4) + "a set" + locs(5, 6, 7, 8) + "café au lait" + locs(9, 9, 9, 9),
    " <ground>dog" + locs(1, 2, 3, 4) + "<obj>cat" + locs(5, 6, 7, 8),
    locs(1, 2, 3, 4) + " It " + locs(5, 6, 7, 8) + "ít" + locs(1, 1, 1, 1),
]

POLYGON_TEXTS = [
    "",
    "</s><s>",
    "<s>" + locs(1, 2, 3, 4, 5, 6) + "</s><pad><pad>",
    "<s>" + locs(0, 0, 999, 0, 999, 999) + "<sep>" + locs(10, 10, 20, 20, 30) + "</s>",  # odd count
    locs(1, 2, 3, 4) + "<sep>" + locs(5) + "<sep>" + locs(6, 7, 8, 9),  # single-coordinate polygon
    locs(1, 2) + "<sep><sep>" + locs(3, 4, 5, 6),  # leading "<sep>" becomes the label
    "<poly>" + locs(1, 2, 3, 4, 5, 6) + "</poly><poly>" + locs(7, 8, 9, 10) + "<sep>" + locs(1, 1, 2, 2) + "</poly>",
    "<poly>" + locs(1, 2, 3, 4, 5, 6) + "<sep>" + locs(7, 8),  # "<poly>" with no "</poly>"
    "person" + locs(1, 2, 3, 4, 5, 6) + "car" + locs(7, 8, 9, 10, 11, 12),
    "<sep><sep><sep><sep>",
    locs(1, 2, 3) + "<pad>" + locs(4),
]

OCR_TEXTS = [
    "",
    "</s><s>",
    "</s><s>HELLO" + locs(10, 20, 300, 20, 300, 80, 10, 80) + " WORLD 42 " + locs(0, 0, 999, 0, 999, 999, 0, 999) + "</s>",
    "<s>" + locs(1, 2, 3, 4, 5, 6, 7, 8) + locs(9, 9, 9, 9, 9, 9, 9, 9) + "</s><pad><pad>",  # no text before a quad
    "short" + locs(1, 2, 3, 4, 5, 6, 7),  # seven coordinates only
    "café\nline" + locs(1, 2, 3, 4, 5, 6, 7, 8),
    "a<poly>b" + locs(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16),
]

OPEN_VOCAB_TEXTS = [
    "",
    "</s><s>",
    "<s>cat" + locs(1, 2, 3, 4) + "dog" + locs(5, 6, 7, 8, 9, 10, 11, 12) + "</s><pad>",
    "<s>cat<poly>" + locs(1, 2, 3, 4, 5, 6) + "</poly>dog<poly>" + locs(7, 8, 9, 10, 11, 12) + "</poly></s>",
    "cat" + locs(1, 2, 3, 4) + "dog<poly>" + locs(7, 8, 9, 10, 11, 12) + "</poly>",  # boxes and polygons mixed
    "cat<poly>" + locs(1, 2, 3, 4, 5) + "<sep>" + locs(6, 7) + "</poly>",
    "cat<poly>" + locs(1, 2, 3, 4, 5, 6),  # "<poly>" without "</poly>"
    "<po<s>ly>cat" + locs(1, 2, 3, 4),  # "<poly>" appears only once "<s>" is removed
    " café " + locs(1, 2, 3, 4) + locs(5, 6, 7, 8),
]

PURE_TEXTS = ["", "</s><s>", "<s>A cat on a mat.</s><pad><pad>", "<s>a</s><s>b</s>", "  spaced  ", "</<s>s>x<loc_1>"]


def _cases():
    by_type = {
        "pure_text": PURE_TEXTS,
        "description_with_bboxes": BOX_TEXTS,
        "bboxes": BOX_TEXTS,
        "phrase_grounding": GROUNDING_TEXTS + BOX_TEXTS,
        "polygons": POLYGON_TEXTS,
        "description_with_bboxes_or_polygons": OPEN_VOCAB_TEXTS + POLYGON_TEXTS,
        "ocr": OCR_TEXTS,
    }
    for task in [*TASKS, UNKNOWN_TASK]:
        parse_type = TASKS[task].parse_type if task in TASKS else "pure_text"
        for i, text in enumerate(by_type[parse_type]):
            yield pytest.param(text, task, SIZES[i % len(SIZES)], id=f"{task.strip('<>')}-{i}")


@pytest.mark.parametrize(("text", "task", "size"), list(_cases()))
def test_matches_transformers(processor, text, task, size):
    assert_same(processor, text, task, size)


def test_every_task_and_parse_type_covered():
    covered = {task.parse_type for task in TASKS.values()}
    assert covered <= set(PARSERS)
    assert len(TASKS) == 15


# 144, 288, 752 and 1136 are sizes where float64 arithmetic would land on the other integer.
@pytest.mark.parametrize("size", [(640, 480), (37, 1001), (144, 288), (752, 1136), (3, 7), (100000, 1)])
def test_every_bin_dequantizes_like_torch(processor, size):
    boxes = ["x" + locs(b, 999 - b, b, (b * 7) % 1000) for b in range(1000)]
    assert_same(processor, "".join(boxes), "<OD>", size)
    # Whole quads: with only four coordinates in a row the OCR regex backtracks quadratically.
    quads = ["x" + locs(b, 999 - b, b, (b * 7) % 1000, (b * 13) % 1000, b // 2, 0, 999) for b in range(1000)]
    assert_same(processor, "".join(quads), "<OCR_WITH_REGION>", size)


def test_upper_case_ocr_options_are_the_ones_read(tokenizer):
    # The checkpoint config's lower-case "pattern"/"area_threshold" are ignored by transformers.
    config = {**DEFAULT_POST_PROCESSOR_CONFIG, "ocr": {"AREA_THRESHOLD": 0.01, "area_threshold": 0.9}}
    processor = build_processor(tokenizer, config)
    text = "big" + locs(0, 0, 999, 0, 999, 999, 0, 999) + "tiny" + locs(1, 1, 2, 1, 2, 2, 1, 2)
    text += "open" + locs(0, 0, 500, 0, 500, 500, 0, 0)
    for size in SIZES:
        expected = processor.post_process_generation(text=text, task="<OCR_WITH_REGION>", image_size=size)
        actual = parse(text, "<OCR_WITH_REGION>", size, config)
        assert typed(actual) == typed(expected)
    assert actual["<OCR_WITH_REGION>"]["labels"] == ["big", "open"]


def test_custom_banned_tokens(tokenizer):
    config = {**DEFAULT_POST_PROCESSOR_CONFIG, "phrase_grounding": {"banned_grounding_tokens": ["dog"]}}
    processor = build_processor(tokenizer, config)
    text = "dog" + locs(1, 2, 3, 4) + "it" + locs(5, 6, 7, 8)
    assert_same(processor, text, "<CAPTION_TO_PHRASE_GROUNDING>", (640, 480), config)


def test_parse_type_missing_from_config_is_an_error(tokenizer):
    config = {key: value for key, value in DEFAULT_POST_PROCESSOR_CONFIG.items() if key != "polygons"}
    processor = build_processor(tokenizer, config)
    with pytest.raises(ValueError, match="Unsupported parse task"):
        processor.post_process_generation(text="", task="<REGION_TO_SEGMENTATION>", image_size=(8, 8))
    with pytest.raises(ValueError, match="Unsupported parse task"):
        parse("", "<REGION_TO_SEGMENTATION>", (8, 8), config)


def _random_text(rng: np.random.Generator) -> str:
    words = ["cat", " a red car ", "it", "the image", "café", " ", "\n", "<", ">", "x", "<od>", "</poly>"]
    specials = ["<poly>", "<sep>", "<s>", "</s>", "<pad>"]
    parts = []
    for _ in range(rng.integers(0, 14)):
        kind = rng.random()
        if kind < 0.35:
            # Runs of 4 and 8 are what boxes and quads need, so favour lengths near them.
            bins = rng.integers(0, 1000, size=rng.choice([1, 2, 3, 4, 4, 5, 6, 8, 8, 9]))
            if rng.random() < 0.05:
                bins[0] = rng.choice([1000, 5000, 123456])
            parts.append(locs(*bins))
        elif kind < 0.7:
            parts.append(words[rng.integers(len(words))])
        else:
            parts.append(specials[rng.integers(len(specials))])
    return "".join(parts)


def test_random_texts(processor):
    rng = np.random.default_rng(20240607)
    tasks = [*TASKS, UNKNOWN_TASK]
    for _ in range(300):
        text = _random_text(rng)
        task = tasks[rng.integers(len(tasks))]
        size = (int(rng.integers(1, 5000)), int(rng.integers(1, 5000)))
        assert_same(processor, text, task, size)


def test_import_does_not_need_torch():
    script = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "transformers"}:
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Block())
import runtime.postprocess as pp
assert pp.parse("cat<loc_1><loc_2><loc_3><loc_4>", "<OD>", (640, 480)) == {
    "<OD>": {"bboxes": [[0, 1, 2, 2]], "labels": ["cat"]}
}
assert not {"torch", "transformers"} & set(sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
