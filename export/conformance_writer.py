"""`--conformance` (on by default with `--mobile`): the artifact's test vectors (runtime/vectors.py).

Run after the manifest is written: the runtime loads the staged artifact (its .ort graphs when it has
them, the files an app runs) and records what it computes on a few embedded images, one task each
(tasks without text, so a port needs no tokenizer), greedy and beam search with bounded length.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from runtime.manifest import Manifest, file_record
from runtime.vectors import FORMAT, TOP_K, VECTORS_NAME, VERSION, measure, png_base64

from .errors import ExportError

log = logging.getLogger("export")
MAX_NEW_TOKENS = 16  # bounded, so a port's unit test runs in seconds on a phone
BEAMS = 3
PREFERRED_TASKS = ("<CAPTION>", "<OD>", "<OCR>")
# |got - want| <= atol + rtol * |want| on the first step's logits. Same graphs and onnxruntime: runs
# are bit-identical. Other kernels move them; measured here (px128, 2026-12-01) by running the .onnx
# files, which x86 onnxruntime lays out for NCHWc convolutions where the .ort files (for ARM) do not:
# fp32 logits within 1.1e-5, int8 within 0.21 at logits of ~20 (activations are requantized at run
# time: a value near a rounding boundary moves by a whole step). A phone's kernels differ more than
# that: these bounds are estimates, not measured on a device.
LOGIT_TOLERANCES = {"fp32": (1e-3, 1e-4), "fp16": (0.1, 0.02), "int8": (0.1, 0.02), "int4": (0.1, 0.02)}
# On each channel's mean and std of pixel_values (normalized units, ~[-2.1, 2.6]), for a port's own
# resize: docs/mobile.md gives what a faithful bicubic and OpenCV's INTER_CUBIC measure against it.
PIXEL_STATS_TOLERANCE = 0.02


def sample_images(image_size: tuple[int, int]) -> list[tuple[str, object]]:
    """(name, PIL image): smaller than the model's input (upscaled, of another aspect) and larger
    (downscaled: the case where a resize without PIL's antialiasing drifts most)."""
    from PIL import Image

    from runtime.probes import sample_image

    height, width = image_size
    small = sample_image(0, (max(8, width // 6), max(8, height // 8)))
    portrait = sample_image(1, (max(8, width // 8), max(8, height // 4)))
    # Blocks of noise, 8 px each: a PNG that compresses, with edges that a resize must filter.
    blocks = sample_image(2, (max(8, width // 6), max(8, height // 6)))
    large = blocks.resize((blocks.width * 8, blocks.height * 8), Image.Resampling.NEAREST)
    return [("upscale", small), ("portrait", portrait), ("downscale", large)]


def sample_tasks(manifest: Manifest, count: int) -> list[str]:
    no_text = [token for token, task in manifest.tasks.items() if "{input}" not in task.prompt]
    if not no_text:
        raise ExportError("--conformance: the checkpoint declares no task without text to record")
    chosen = [t for t in PREFERRED_TASKS if t in no_text] + [t for t in no_text if t not in PREFERRED_TASKS]
    return [chosen[i % len(chosen)] for i in range(count)]


def vector_options(model) -> dict:
    """Greedy, and 3 beams with no repeated 3-grams, from the artifact's defaults (forced BOS/EOS,
    early stopping, length penalty as the checkpoint sets them), at a bounded length."""
    manifest = model.manifest
    limit = min(MAX_NEW_TOKENS, manifest.dims.max_positions, manifest.static.max_decode if manifest.static else MAX_NEW_TOKENS)
    common = dict(max_new_tokens=limit, min_new_tokens=0)
    options = {"greedy": model.defaults.replace(num_beams=1, no_repeat_ngram_size=0, **common)}
    beams = min(BEAMS, manifest.static.beams) if manifest.static else BEAMS
    if beams > 1:
        options["beam"] = model.defaults.replace(num_beams=beams, no_repeat_ngram_size=3, **common)
    return options


def write_conformance(folder: Path, manifest: Manifest, prefer_ort: bool) -> Manifest:
    """conformance.json in the staged `folder`, recorded in its manifest (written again)."""
    from PIL import Image

    from runtime.conformance import graph_files
    from runtime.model import Florence2

    started = time.perf_counter()
    model = Florence2.load(folder, verify=False, prefer_ort=prefer_ort)
    options = vector_options(model)
    atol, rtol = LOGIT_TOLERANCES.get(manifest.precision, LOGIT_TOLERANCES["int8"])
    samples = []
    for (name, image), task in zip(sample_images(manifest.dims.image_size), sample_tasks(manifest, 3)):
        record, _ = measure(model, image, task, options, TOP_K)
        record["resized"]["png"] = png_base64(Image.fromarray(model.preprocessor.resized(image)))
        samples.append({"name": name, "task": task, "image_png": png_base64(image),
                        "image_size": list(image.size), **record})
    kind = "ort" if prefer_ort else "onnx"
    vectors = {"format": FORMAT, "version": VERSION, "graphs": {"format": kind, "files": graph_files(manifest, kind)},
               "top_k": TOP_K,
               "tolerances": {"pixel_stats": PIXEL_STATS_TOLERANCE, "logits_atol": atol, "logits_rtol": rtol},
               "options": {mode: dataclasses.asdict(o) for mode, o in options.items()}, "samples": samples}
    path = folder / VECTORS_NAME
    path.write_text(json.dumps(vectors, indent=1) + "\n", encoding="utf-8")
    manifest = dataclasses.replace(manifest, conformance=path.name, files={**manifest.files, path.name: file_record(path)})
    manifest.write(folder)
    log.info("conformance vectors: %d samples (%s graphs), %.1f KB, %.1f s", len(samples), kind,
             path.stat().st_size / 1e3, time.perf_counter() - started)
    return manifest
