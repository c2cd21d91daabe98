"""`Florence2`: an artifact folder + images + a task -> token ids or parsed results.

    model = Florence2.load("florence2-artifact", device="cpu")
    model("photo.jpg", "<OD>")            -> {"<OD>": {"bboxes": [...], "labels": [...]}}
    model.generate("photo.jpg", "<OD>")   -> [2, 0, ..., 2]  (as transformers' generate()[0].tolist())

A list of images runs as one batch (one task for all, or one per image). Generation options default
to the checkpoint's generation config and are overridden per call (num_beams=..., max_new_tokens=...).

One generation path serves every artifact: dynamic and static ones differ only in the decode plan
(the whole batch at once, or image by image for a static artifact's batch of 1) and the step object
(a growing cache, or fixed buffers). Calls on one loaded model may come from several threads.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .contract import (ATTENTION_MASK, GRAPH_NAMES, IMAGE_FEATURES, INPUT_IDS, INPUTS_EMBEDS, PIXEL_VALUES)
from .defaults import default_options, token_rules
from .errors import ArtifactError, BackendError, TaskError
from .generation import GenerationOptions
from .graph import Graph
from .images import load_image
from .manifest import COMPUTE_PRECISIONS, TOKENIZER_NAME, Manifest, read_manifest
from .postprocess import parse
from .preprocess import Preprocessor
from .prompts import build_prompt
from .search import decode, padding_fill
from .static_step import StaticDecoderStep
from .step import DecoderStep
from .tasks import Task
from .tokenizer import PromptTokenizer


@dataclass
class Request:
    """One batch, normalised: images loaded, one task, prompt and prompt ids per image."""

    images: list
    tasks: list[str]
    prompts: list[str]
    prompt_ids: list[list[int]]

    def part(self, indices: list[int]) -> Request:
        pick = lambda values: [values[i] for i in indices]  # noqa: E731
        return Request(pick(self.images), pick(self.tasks), pick(self.prompts), pick(self.prompt_ids))


@dataclass
class Result:
    ids: list[int]  # as transformers' generate() returns them, decoder start token first
    text: str  # decoded with special tokens kept, as post_process_generation expects
    answer: dict  # {task: parsed answer}
    image_size: tuple[int, int]  # (width, height) of the image as given: the answer's coordinates


class Florence2:
    def __init__(self, manifest: Manifest, folder: Path, graphs: dict[str, Graph], tokenizer: PromptTokenizer):
        self.manifest, self.folder, self.graphs, self.tokenizer = manifest, folder, graphs, tokenizer
        self.contract = manifest.contract
        self.preprocessor = Preprocessor.from_config(manifest.preprocessing)
        self.tasks = {token: Task(token, t.prompt, t.parse_type) for token, t in manifest.tasks.items()}
        self.rules = token_rules(manifest)
        self.defaults = default_options(manifest)
        self.device = graphs["decoder"].device
        self._step_type = StaticDecoderStep if manifest.static else DecoderStep
        self._profiling = threading.local()  # profile() times the calls of its own thread only

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", verify: bool = True,
             inference_precision: str | None = None, prefer_ort: bool = False) -> Florence2:
        """Open an artifact folder. `verify` checks the manifest's checksum and every file's sha256 first
        (a few seconds for large models). `inference_precision` ("f32" default, "bf16", "f16") is the
        compute precision of an openvino artifact. `prefer_ort` runs the ORT-format graphs of a
        `--mobile` artifact (what an app runs with ONNX Runtime Mobile) instead of the .onnx files."""
        folder = Path(path)
        manifest = read_manifest(folder, verify=verify)
        if device == "npu" and not manifest.static:
            raise ArtifactError(f"device 'npu' needs a static-shape artifact (python -m export ... --static); {folder} has dynamic shapes")
        options = {}
        if inference_precision is not None:
            if manifest.target != "openvino":
                raise ArtifactError(f"inference_precision applies to openvino artifacts; {folder} is {manifest.target}")
            options["inference_precision"] = inference_precision
        elif manifest.precision in COMPUTE_PRECISIONS:  # a bf16 artifact: its compute precision, where the device has it
            options.update(inference_precision=COMPUTE_PRECISIONS[manifest.precision], precision_fallback=True)
        if prefer_ort and any("ort" not in g.variants for g in manifest.graphs.values()):
            raise ArtifactError(f"prefer_ort: {folder} has no ORT-format graphs; export it with --mobile")
        tokens = manifest.tokens
        tokenizer = PromptTokenizer(folder / TOKENIZER_NAME, tokens.bos, tokens.eos, tokens.pad)
        if len(tokenizer) != manifest.dims.tokenizer_size:
            raise ArtifactError(f"{folder / TOKENIZER_NAME} has {len(tokenizer)} tokens; the manifest says "
                                f"{manifest.dims.tokenizer_size}: tokenizer and graphs do not belong together")
        graphs = {name: Graph(_open(manifest, folder, name, device, options, prefer_ort), manifest.contract.graph(name))
                  for name in GRAPH_NAMES}
        return cls(manifest, folder, graphs, tokenizer)

    def generate(self, image, task: str | list[str], text: str | list[str] | None = None, **options):
        """Generated ids, decoder start token first: a list for one image, a list of lists for a list."""
        request = self._request(image, task, text)
        ids = self._generate(request, self.defaults.replace(**options)).tolist()
        return ids if isinstance(image, list) else ids[0]

    def __call__(self, image, task: str | list[str], text: str | list[str] | None = None, **options):
        """Parsed results as `Florence2Processor.post_process_generation` returns them: {task: answer}."""
        results = [r.answer for r in self.run(image, task, text, **options)]
        return results if isinstance(image, list) else results[0]

    def run(self, image, task: str | list[str], text: str | list[str] | None = None, **options) -> list[Result]:
        """One `Result` per image: generated ids, decoded text, parsed answer and image size together."""
        request = self._request(image, task, text)
        ids = self._generate(request, self.defaults.replace(**options))
        results = []
        for row, task_token, img in zip(ids.tolist(), request.tasks, request.images):
            decoded = self.tokenizer.decode(row)
            answer = parse(decoded, task_token, img.size, self.manifest.post_processing, self.tasks)
            results.append(Result(row, decoded, answer, img.size))
        return results

    @contextlib.contextmanager
    def profile(self):
        """Times the stages of every call this thread makes inside the block, summed, in seconds:

            with model.profile() as stages:
                model.generate(image, "<OD>")
            stages  -> {"preprocess": ..., "vision": ..., "encoder": ..., "decode": ...}

        Outside the block the only cost is a perf_counter() per stage."""
        self._profiling.stages = stages = {}
        try:
            yield stages
        finally:
            self._profiling.stages = None

    def _lap(self, stage: str, began: float) -> float:
        now = time.perf_counter()
        stages = getattr(self._profiling, "stages", None)
        if stages is not None:
            stages[stage] = stages.get(stage, 0.0) + now - began
        return now

    def _request(self, image, task, text) -> Request:
        images = [load_image(i) for i in (image if isinstance(image, list) else [image])]
        count = len(images)
        if count == 0:
            raise TaskError("expected at least one image; got an empty list")
        tasks = _per_image(task, count, "task")
        texts = _per_image(text, count, "text")
        prompts = [build_prompt(t, x, self.tasks) for t, x in zip(tasks, texts)]
        return Request(images, tasks, prompts, [self.tokenizer.encode(p) for p in prompts])

    def _generate(self, request: Request, options: GenerationOptions) -> np.ndarray:
        self.contract.check_request([len(ids) for ids in request.prompt_ids], options.max_new_tokens, options.num_beams)
        count = len(request.images)
        # The decode plan: a static artifact's graphs take one image, so its batches run image by image.
        plan = [[i] for i in range(count)] if self.contract.static else [list(range(count))]
        rows = []
        for indices in plan:
            cross, mask = self.encode(request.part(indices))
            step = self.make_step(cross, mask)
            began = time.perf_counter()
            rows.append(decode(step, len(indices), options, self.rules))
            self._lap("decode", began)
        return _join(rows, padding_fill(options, self.rules))

    def encode(self, request: Request, record: dict | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Vision tower, prompt embedding and encoder: the cross-attention K/V of every decoder layer
        and the encoder mask, computed once per batch. `record`, if given, receives each graph's feeds."""
        began = time.perf_counter()
        pixels = self.preprocessor(request.images)
        began = self._lap("preprocess", began)
        vision = {PIXEL_VALUES: pixels}
        features = self.graphs["vision_encoder"].run(vision, finite=(IMAGE_FEATURES,))[IMAGE_FEATURES]
        began = self._lap("vision", began)
        width = self.contract.prompt_width(max(len(ids) for ids in request.prompt_ids))
        ids, prompt_mask = self.tokenizer.pad(request.prompt_ids, width)
        embeds = self.graphs["embed_tokens"].run({INPUT_IDS: ids})[INPUTS_EMBEDS]
        mask = np.concatenate([np.ones(features.shape[:2], dtype=np.int64), prompt_mask], axis=1)
        encoder = {INPUTS_EMBEDS: np.concatenate([features, embeds], axis=1), ATTENTION_MASK: mask}
        cross = self.graphs["encoder"].run(encoder, self.contract.cross_names)
        self._lap("encoder", began)
        if record is not None:
            record.update(vision_encoder=vision, embed_tokens={INPUT_IDS: ids}, encoder=encoder)
        return cross, mask

    def make_step(self, cross: dict[str, np.ndarray], mask: np.ndarray):
        """The decoder step object for encoded inputs (what `_generate` decodes with)."""
        return self._step_type(self.graphs["decoder"], self.contract, cross, mask)


def _open(manifest: Manifest, folder: Path, name: str, device: str, options: dict, prefer_ort: bool = False):
    from platforms import PlatformError, open_session

    # onnxruntime reads the ORT format from a .ort file as it reads ONNX from a .onnx one.
    path = folder / manifest.graphs[name].variants["ort"].file if prefer_ort else manifest.graph_path(folder, name)
    try:
        return open_session(manifest.target, path, device=device, **options)
    except PlatformError as err:
        raise BackendError(str(err)) from None


def _join(parts: list[np.ndarray], fill: int) -> np.ndarray:
    """Row blocks of different widths as one batch, padded as transformers pads a batch."""
    if len(parts) == 1:
        return parts[0]
    ids = np.full((sum(len(p) for p in parts), max(p.shape[1] for p in parts)), fill, dtype=np.int64)
    row = 0
    for part in parts:
        ids[row:row + len(part), :part.shape[1]] = part
        row += len(part)
    return ids


def _per_image(value, count: int, name: str) -> list:
    if isinstance(value, list):
        if len(value) != count:
            raise TaskError(f"got {len(value)} {name} values for {count} images: give one, or one per image")
        return value
    return [value] * count
