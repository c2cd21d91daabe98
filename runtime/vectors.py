"""Conformance vectors: what an artifact computes on a few embedded images, so that a port of the
loop (a Kotlin, Java or Swift app) checks itself against the same numbers our runtime checks itself
against (`python -m runtime.conformance ARTIFACT`; docs/mobile.md).

`conformance.json` (named by the manifest's `conformance`, listed in `files` with its sha256). JSON
with base64 PNGs: every app platform reads both with its standard library, and a test can load it
from the app's own assets.

    format, version         "florence2-edge conformance", 1
    graphs                  {"format": "ort" | "onnx", "files": {graph: {"file", "sha256"}}}: what made them
    top_k                   how many first-step logits each sample keeps
    tolerances              pixel_stats (abs, on each channel's mean and std of pixel_values), logits_atol and
                            logits_rtol (|got - want| <= atol + rtol * |want|); ids, text and answers are exact
    options                 {"greedy": {...}, "beam": {...}}: every generation option, as runtime/generation.py
                            names them (transformers' GenerationConfig names); "beam" is absent when the
                            artifact has one decoder row (static, --static-beams 1)
    samples[]               name, task, image_png (base64 PNG, RGB), image_size [width, height], and:
      resized               {"png", "shape" [H, W, 3], "sha256"}: the uint8 RGB image after resize (sha256 of
                            its H*W*3 bytes, row-major), so a port can feed our pixels and test the rest exactly
      pixel_values          {"mean" [3], "std" [3], "sha256"}: of the float32 [1, 3, H, W] tensor from those
                            pixels (sha256 of its little-endian bytes): exact for our pixels, within
                            pixel_stats for the port's own resize
      prompt_ids            the encoder prompt's ids (= the manifest's tasks.<task>.prompt_ids)
      first_step            {"ids", "logits"}: the top_k largest raw logits of the first decoder step (input
                            tokens.decoder_start), among ids below dims.tokenizer_size, largest first
      greedy, beam          {"ids", "text", "answer"}: generated ids as generate() returns them (decoder start
                            first), their text (special tokens kept) and the parsed answer {task: ...}
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np

from .errors import ArtifactError

VECTORS_NAME = "conformance.json"
FORMAT = "florence2-edge conformance"
VERSION = 1
TOP_K = 5
_KEYS = ("graphs", "top_k", "tolerances", "options", "samples")
_SAMPLE_KEYS = ("name", "task", "image_png", "image_size", "resized", "pixel_values", "prompt_ids", "first_step")


def png_base64(image) -> str:
    """A PIL image as base64 PNG, without colour profile or gamma chunks (decoders then read the
    stored bytes as they are)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_from_base64(data: str):
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        image.load()
        return image


def digest(array: np.ndarray) -> str:
    """sha256 of an array's bytes, row-major, little-endian."""
    return hashlib.sha256(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()).hexdigest()


def read_vectors(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArtifactError(f"cannot read {path}: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ArtifactError(f"{path} is not a {FORMAT} file of version {VERSION}")
    missing = [key for key in _KEYS if key not in data]
    if missing or not isinstance(data["samples"], list) or not data["samples"]:
        raise ArtifactError(f"{path}: expected the keys {', '.join(_KEYS)} and a non-empty list of samples")
    for index, sample in enumerate(data["samples"]):
        wanted = [*_SAMPLE_KEYS, *data["options"]]
        missing = [key for key in wanted if not isinstance(sample, dict) or key not in sample]
        if missing:
            raise ArtifactError(f"{path}: samples[{index}] lacks {', '.join(missing)}")
    return data


def first_step(model, image, task: str, prompt_ids: list[int]) -> np.ndarray:
    """float32 [tokenizer_size]: the raw logits of the first decoder step on `image` (ids past the
    tokenizer, embedding padding, left out)."""
    from .model import Request
    from .prompts import build_prompt

    request = Request([image], [task], [build_prompt(task, None, model.tasks)], [prompt_ids])
    cross, mask = model.encode(request)
    step = model.make_step(cross, mask)
    start = np.full((1, 1), model.manifest.tokens.decoder_start, dtype=np.int64)
    return np.asarray(step(start)[0, :model.manifest.dims.tokenizer_size], dtype=np.float32)


def top_logits(logits: np.ndarray, k: int) -> dict:
    order = np.argsort(-logits, kind="stable")[:k]  # ties in index order
    return {"ids": order.tolist(), "logits": [float(v) for v in logits[order]]}


def measure(model, image, task: str, options: dict, top_k: int = TOP_K) -> tuple[dict, np.ndarray]:
    """A sample's record (all but name and image_png) for a loaded Florence2 model, and all the
    first step's logits. `options`: {"greedy": GenerationOptions, "beam": GenerationOptions}."""
    from .prompts import build_prompt

    preprocessor = model.preprocessor
    resized = preprocessor.resized(image)
    pixels = preprocessor([image])
    prompt_ids = model.tokenizer.encode(build_prompt(task, None, model.tasks))
    logits = first_step(model, image, task, prompt_ids)
    record = {
        "resized": {"shape": list(resized.shape), "sha256": digest(resized)},
        "pixel_values": {"mean": [float(c.mean(dtype=np.float64)) for c in pixels[0]],
                         "std": [float(c.std(dtype=np.float64)) for c in pixels[0]], "sha256": digest(pixels)},
        "prompt_ids": prompt_ids,
        "first_step": top_logits(logits, top_k),
    }
    for mode, chosen in options.items():
        result = model.run(image, task, **dataclasses.asdict(chosen))[0]
        record[mode] = {"ids": result.ids, "text": result.text, "answer": result.answer}
    return record, logits
