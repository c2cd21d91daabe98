"""`Florence2`: an artifact folder + images + a task -> token ids or parsed results.

    model = Florence2.load("florence2-artifact", device="cpu")
    model("photo.jpg", "<OD>")            -> {"<OD>": {"bboxes": [...], "labels": [...]}}
    model.generate("photo.jpg", "<OD>")   -> [2, 0, ..., 2]  (as transformers' generate()[0].tolist())

A list of images runs as one batch (one task for all, or one per image). Generation options default
to the checkpoint's generation config and are overridden per call (num_beams=..., max_new_tokens=...).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ArtifactError
from .generation import GenerationOptions
from .images import load_image
from .manifest import TOKENIZER_NAME, Manifest, read_manifest
from .postprocess import parse
from .preprocess import Preprocessor
from .prompts import build_prompt
from .search import decode
from .static_step import generate_static, static_defaults
from .step import DecoderStep
from .tasks import Task
from .tokenizer import PromptTokenizer


@dataclass
class Request:
    """One batch, normalised: images loaded, one task, text and prompt per image."""

    images: list
    tasks: list[str]
    prompts: list[str]


@dataclass
class Result:
    ids: list[int]  # as transformers' generate() returns them, decoder start token first
    text: str  # decoded with special tokens kept, as post_process_generation expects
    answer: dict  # {task: parsed answer}


class Florence2:
    _stages: dict | None = None  # set inside profile(): stage name -> seconds, summed over calls

    def __init__(self, manifest: Manifest, folder: Path, sessions: dict, tokenizer: PromptTokenizer):
        self.manifest, self.folder, self.sessions, self.tokenizer = manifest, folder, sessions, tokenizer
        self.preprocessor = Preprocessor.from_config(manifest.preprocessing)
        self.tasks = {token: Task(token, t["prompt"], t["parse_type"]) for token, t in manifest.tasks.items()}
        self.defaults = default_options(manifest)
        if manifest.static:
            self.defaults = static_defaults(self.defaults, manifest.static)
        self.device = sessions["decoder"].device

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", verify: bool = True,
             inference_precision: str | None = None) -> "Florence2":
        """Open an artifact folder. `verify` checks every file's sha256 first (a few seconds for large models).
        `inference_precision` ("f32" default, "bf16", "f16") is the compute precision of an openvino artifact."""
        from platforms import open_session

        folder = Path(path)
        manifest = read_manifest(folder, verify=verify)
        if device == "npu" and not manifest.static:
            raise ArtifactError(f"device 'npu' needs a static-shape artifact (python -m export ... --static); {folder} has dynamic shapes")
        options = {}
        if inference_precision is not None:
            if manifest.target != "openvino":
                raise ArtifactError(f"inference_precision applies to openvino artifacts; {folder} is {manifest.target}")
            options["inference_precision"] = inference_precision
        tokens = manifest.tokens
        tokenizer = PromptTokenizer(folder / TOKENIZER_NAME, tokens["bos"], tokens["eos"], tokens["pad"])
        sessions = {name: open_session(manifest.target, manifest.graph_path(folder, name), device=device, **options)
                    for name in manifest.graphs}
        return cls(manifest, folder, sessions, tokenizer)

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
        """One `Result` per image: generated ids, decoded text and parsed answer together."""
        request = self._request(image, task, text)
        ids = self._generate(request, self.defaults.replace(**options))
        results = []
        for row, task_token, img in zip(ids.tolist(), request.tasks, request.images):
            decoded = self.tokenizer.decode(row)
            answer = parse(decoded, task_token, img.size, self.manifest.post_processing)
            results.append(Result(row, decoded, answer))
        return results

    @contextlib.contextmanager
    def profile(self):
        """Times the stages of every call made inside the block, summed, in seconds:

            with model.profile() as stages:
                model.generate(image, "<OD>")
            stages  -> {"preprocess": ..., "vision": ..., "encoder": ..., "decode": ...}

        Outside the block the only cost is a perf_counter() per stage."""
        self._stages = stages = {}
        try:
            yield stages
        finally:
            self._stages = None

    def _lap(self, stage: str, began: float) -> float:
        now = time.perf_counter()
        if self._stages is not None:
            self._stages[stage] = self._stages.get(stage, 0.0) + now - began
        return now

    def _request(self, image, task, text) -> Request:
        images = [load_image(i) for i in (image if isinstance(image, list) else [image])]
        count = len(images)
        tasks = _per_image(task, count, "task")
        texts = _per_image(text, count, "text")
        prompts = [build_prompt(t, x, self.tasks) for t, x in zip(tasks, texts)]
        return Request(images, tasks, prompts)

    def _generate(self, request: Request, options: GenerationOptions) -> np.ndarray:
        if self.manifest.static:  # fixed shapes: image by image, prompt padded, KV buffers
            return generate_static(self, request, options)
        cross, mask = self.encode(request)
        dims = self.manifest.dims
        step = DecoderStep(self.sessions["decoder"], cross, mask, dims["decoder_layers"], dims["decoder_heads"],
                           dims["head_dim"])
        began = time.perf_counter()
        ids = decode(step, len(request.images), options)
        self._lap("decode", began)
        return ids

    def encode(self, request: Request) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Vision tower, prompt embedding and encoder: the cross-attention K/V of every decoder layer
        and the encoder mask, computed once per batch."""
        began = time.perf_counter()
        pixels = self.preprocessor(request.images)
        began = self._lap("preprocess", began)
        features = self.sessions["vision_encoder"].run({"pixel_values": pixels})["image_features"]
        began = self._lap("vision", began)
        width = self.manifest.static["prompt_bucket"] if self.manifest.static else None
        ids, prompt_mask = self.tokenizer.encode_batch(request.prompts, width=width)
        embeds = self.sessions["embed_tokens"].run({"input_ids": ids})["inputs_embeds"]
        inputs = np.concatenate([features, embeds], axis=1)
        mask = np.concatenate([np.ones(features.shape[:2], dtype=np.int64), prompt_mask], axis=1)
        out = self.sessions["encoder"].run({"inputs_embeds": inputs, "attention_mask": mask})
        self._lap("encoder", began)
        return {name: value for name, value in out.items() if name.startswith("cross.")}, mask


def _per_image(value, count: int, name: str) -> list:
    if isinstance(value, list):
        if len(value) != count:
            from .errors import TaskError

            raise TaskError(f"got {len(value)} {name} values for {count} images: give one, or one per image")
        return value
    return [value] * count


def default_options(manifest: Manifest) -> GenerationOptions:
    """The checkpoint's generation config, in our option names."""
    g, tokens, dims = manifest.generation, manifest.tokens, manifest.dims
    max_new = g.get("max_new_tokens") or ((g["max_length"] - 1) if g.get("max_length") else 20)
    # Embedding rows past the tokenizer (padding for alignment) are never a real token.
    padded = dims["tokenizer_size"] < dims["vocab_size"]
    return GenerationOptions(
        max_new_tokens=max_new,
        min_new_tokens=g.get("min_new_tokens") or 0,
        num_beams=g.get("num_beams") or 1,
        no_repeat_ngram_size=g.get("no_repeat_ngram_size") or 0,
        early_stopping=g["early_stopping"] if g.get("early_stopping") is not None else False,
        length_penalty=g["length_penalty"] if g.get("length_penalty") is not None else 1.0,
        forced_bos_token_id=g.get("forced_bos_token_id"),
        forced_eos_token_id=g.get("forced_eos_token_id"),
        decoder_start_token_id=tokens["decoder_start"],
        eos_token_id=g.get("eos_token_id") if g.get("eos_token_id") is not None else tokens["eos"],
        pad_token_id=g.get("pad_token_id") if g.get("pad_token_id") is not None else tokens["pad"],
        vocab_size=dims["tokenizer_size"] if padded else None,
    )
